from django.core.management.base import BaseCommand, CommandError

from loops_project.commands import loop_or_error, org_or_error
from loops_project.errors import DomainError
from runs.models import Run
from runs.selectors import filter_runs

ROW = "{:<32} {:<20} {:>4} {:<10} {:<10} {:<20} {:>8}"


class Command(BaseCommand):
    help = "List an organization's runs, newest first."

    def add_arguments(self, parser):
        parser.add_argument("org", help="organization slug or id")
        parser.add_argument("--loop", help="loop slug or id")
        parser.add_argument("--status", help="a status, or a comma list of them")
        parser.add_argument("--limit", type=int, default=20, help="at most this many (20)")

    def handle(self, *args, org, loop, status, limit, **options):
        organization = org_or_error(org)
        if limit < 1:
            raise CommandError("--limit must be at least 1")
        target = loop_or_error(organization, loop) if loop else None
        try:
            qs = filter_runs(
                Run.objects.for_org(organization).select_related("loop", "version"),
                organization, status=status, loop=target.pk if target else None,
            )  # fmt: skip
        except DomainError as exc:
            raise CommandError(exc.message) from None
        rows = list(qs.order_by("-created_at", "-pk")[:limit])
        if not rows:
            self.stdout.write("No matching runs.")
            return
        header = ("RUN", "LOOP", "VER", "STATUS", "TRIGGER", "CREATED", "MS")
        self.stdout.write(ROW.format(*header))
        for r in rows:
            self.stdout.write(
                ROW.format(
                    r.pk,
                    r.loop.slug[:20],
                    r.version.number if r.version_id else "-",
                    r.status,
                    r.trigger_type,
                    f"{r.created_at:%Y-%m-%d %H:%M:%S}",
                    r.duration_ms if r.duration_ms is not None else "-",
                )
            )
