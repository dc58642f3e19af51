from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from accounts.audit import Actor
from loops.models import Loop
from loops.services import loop_create, loop_deploy
from loops_project.commands import loop_or_error, org_or_error
from loops_project.errors import DomainError


class Command(BaseCommand):
    help = (
        "Deploy a loop's code from a file as its next version (creating the loop if needed). "
        "Prints the version number."
    )

    def add_arguments(self, parser):
        parser.add_argument("org", help="organization slug or id")
        parser.add_argument("loop", help="loop slug (or id)")
        parser.add_argument("file", help="path to the .py file")
        parser.add_argument("--note", default="")

    def handle(self, *args, org, loop, file, note, **options):
        organization = org_or_error(org)
        path = Path(file)
        if not path.is_file():
            raise CommandError(f"No such file: {file}")
        try:
            code = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from None
        limit = Loop._meta.get_field("slug").max_length
        if len(loop) > limit:
            raise CommandError(f"The loop slug is longer than {limit} characters")
        if loop.startswith("loop_"):
            # An id names an existing loop; only a slug may create one.
            target = loop_or_error(organization, loop)
        else:
            target = Loop.objects.filter(organization=organization, slug=loop).first()
        try:
            if target is None:
                target = loop_create(
                    organization=organization, slug=loop, name=loop, code=code,
                    author_name="cli", note=note, actor=Actor.system("manage.py deploy"),
                )  # fmt: skip
                version = target.active_version
            else:
                version = loop_deploy(loop=target, code=code, author_name="cli", note=note,
                                      actor=Actor.system("manage.py deploy"))  # fmt: skip
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(str(version.number))
