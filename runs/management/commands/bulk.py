import time

from django.core.management.base import BaseCommand, CommandError

from accounts.audit import Actor
from loops_project.commands import org_or_error
from loops_project.errors import DomainError
from runs.bulk import bulk_count, bulk_job_create, bulk_job_revive
from runs.models import BulkAction, BulkJob

POLL_SECONDS = 1.0


class Command(BaseCommand):
    help = (
        "Cancel, resume or restart every run of an organization that a runs-list filter "
        "matches, as a bulk job the workers go through in chunks (audited as runs.bulk)."
    )

    def add_arguments(self, parser):
        parser.add_argument("org", help="organization slug or id")
        parser.add_argument("action", choices=BulkAction.values)
        parser.add_argument("--loop", help="loop slug or id")
        parser.add_argument("--status", help="a status, or a comma list of them")
        parser.add_argument("--created-after", help="ISO 8601 with a time zone (inclusive)")
        parser.add_argument("--created-before", help="ISO 8601 with a time zone (exclusive)")
        parser.add_argument("--batch", help="a batch id")
        parser.add_argument("--dry-run", action="store_true", help="print the count only")
        parser.add_argument(
            "--wait", action="store_true", help="wait for the job to end (workers must run)"
        )

    def handle(self, *args, org, action, dry_run, wait, **options):
        organization = org_or_error(org)
        names = {"loop": "loop", "status": "status", "created_after": "createdAfter",
                 "created_before": "createdBefore", "batch": "batch"}  # fmt: skip
        filter = {names[k]: options[k] for k in names if options.get(k)}
        try:
            if dry_run:
                count = bulk_count(organization=organization, filter=filter)
                self.stdout.write(f"{count} runs match; nothing was done (--dry-run).")
                return
            job = bulk_job_create(organization=organization, action=action, filter=filter,
                                  actor=Actor.system("manage.py bulk"))  # fmt: skip
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Bulk job {job.pk}: {action} {job.total} runs.")
        while wait and job.is_running:
            time.sleep(POLL_SECONDS)
            job = BulkJob.objects.get(pk=job.pk)
            bulk_job_revive(job)  # a job whose task was lost gets another
        if wait:
            self.stdout.write(f"{job.status}: {job.done} done, {job.failed} failed.")
