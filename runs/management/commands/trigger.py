import json
import time

from django.core.management.base import BaseCommand, CommandError

from loops_project.api import parse_json
from loops_project.commands import loop_or_error, org_or_error
from loops_project.errors import DomainError
from runs.models import Run, Step, TriggerType
from runs.schemas import run_payload
from runs.services import run_trigger


class Command(BaseCommand):
    help = "Trigger a run of a loop. Prints the run id (and, with --wait, the ended run as JSON)."

    def add_arguments(self, parser):
        parser.add_argument("org", help="organization slug or id")
        parser.add_argument("loop", help="loop slug or id")
        parser.add_argument("--input", default="{}", help="JSON input (event.body)")
        parser.add_argument("--wait", action="store_true", help="wait for the run to end")
        parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")

    def handle(self, *args, org, loop, input, wait, timeout, **options):
        target = loop_or_error(org_or_error(org), loop)
        try:
            value = parse_json(input)  # the API's strict JSON: no NaN, Infinity or NUL
        except ValueError as exc:
            raise CommandError(f"--input is not valid JSON: {exc}") from None
        try:
            run = run_trigger(loop=target, input=value, trigger_type=TriggerType.USER)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(run.pk)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while True:
            run = Run.objects.select_related("loop", "version").get(pk=run.pk)
            if run.is_ended:
                break
            if time.monotonic() > deadline:
                raise CommandError(
                    f"Run {run.pk} is still {run.status} after {timeout} s "
                    "(is a worker running? manage.py qcluster)"
                )
            time.sleep(0.1)
        # The same JSON as GET /api/v1/runs/{id}: the run with its steps.
        steps = list(Step.objects.filter(run=run).order_by("order"))
        self.stdout.write(json.dumps(run_payload(run, steps=steps), default=str, indent=2))
