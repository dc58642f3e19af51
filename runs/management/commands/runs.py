from django.core.management.base import BaseCommand, CommandError

from loops_project.commands import org_or_error
from loops_project.errors import DomainError
from runs.models import Run
from runs.selectors import filter_runs


class Command(BaseCommand):
    help = "List an organization's runs, newest first."

    def add_arguments(self, parser):
        parser.add_argument("org")
        parser.add_argument("--loop")
        parser.add_argument("--status", help="comma list of statuses")
        parser.add_argument("--limit", type=int, default=20)

    def handle(self, *args, org, loop, status, limit, **options):
        organization = org_or_error(org)
        if limit < 1:
            raise CommandError("--limit must be at least 1")
        try:
            qs = filter_runs(Run.objects.for_org(organization).select_related("loop", "version"),
                             organization, status=status, loop=loop)  # fmt: skip
        except DomainError as exc:
            raise CommandError(exc.message) from None
        rows = list(qs.order_by("-created_at", "-pk")[:limit])
        if not rows:
            self.stdout.write("No matching runs.")
            return
        self.stdout.write(
            f"{'RUN':<32} {'LOOP':<20} {'VER':>4} {'STATUS':<10} {'TRIGGER':<10} {'CREATED':<20} {'MS':>8}"
        )
        for r in rows:
            self.stdout.write(
                f"{r.pk:<32} {r.loop.slug[:20]:<20} {r.version.number if r.version_id else '-':>4} "
                f"{r.status:<10} {r.trigger_type:<10} {r.created_at:%Y-%m-%d %H:%M:%S}  "
                f"{r.duration_ms if r.duration_ms is not None else '-':>8}"
            )
