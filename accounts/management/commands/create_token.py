from django.core.management.base import BaseCommand, CommandError

from accounts.audit import Actor
from accounts.models import ApiToken, TokenScope
from accounts.services import token_create
from loops_project.commands import org_or_error


class Command(BaseCommand):
    help = "Create an API token for an organization. The token is printed alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("org", help="organization slug or id")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--scope", default=TokenScope.FULL, choices=TokenScope.values)

    def handle(self, *args, org, name, scope, **options):
        organization = org_or_error(org)
        if not name.strip():
            raise CommandError("--name must not be empty")
        limit = ApiToken._meta.get_field("name").max_length
        if len(name) > limit:
            raise CommandError(f"--name is longer than {limit} characters")
        token, raw = token_create(organization=organization, name=name, scope=scope,
                                  actor=Actor.system("manage.py create_token"))  # fmt: skip
        self.stdout.write(
            f"Created {token.scope} token {token.pk} for {organization.slug}; "
            "it is shown only once:"
        )
        self.stdout.write(raw)
