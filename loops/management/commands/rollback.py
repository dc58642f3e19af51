from django.core.management.base import BaseCommand, CommandError

from accounts.audit import Actor
from loops.services import loop_rollback
from loops_project.commands import loop_or_error, org_or_error
from loops_project.errors import DomainError


class Command(BaseCommand):
    help = "Make an earlier version of a loop active again."

    def add_arguments(self, parser):
        parser.add_argument("org", help="organization slug or id")
        parser.add_argument("loop", help="loop slug or id")
        parser.add_argument("version", type=int, help="the version number to make active")

    def handle(self, *args, org, loop, version, **options):
        target = loop_or_error(org_or_error(org), loop)
        try:
            loop_rollback(loop=target, number=version, actor=Actor.system("manage.py rollback"))
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Loop {target.slug} now runs version {version}")
