from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError
from django.utils.text import slugify

from accounts.models import Organization
from accounts.services import organization_create


class Command(BaseCommand):
    help = "Create an organization, optionally with an owner (an existing user)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--owner", help="username of an existing user")

    def handle(self, *args, slug, name, owner, **options):
        if slugify(slug) != slug or not slug:
            raise CommandError(
                f"'{slug}' is not a valid slug (lower-case letters, digits, hyphens)"
            )
        for field, value in (("slug", slug), ("name", name)):
            limit = Organization._meta.get_field(field).max_length
            if len(value) > limit:
                raise CommandError(f"The {field} is longer than {limit} characters")
        if Organization.objects.filter(slug=slug).exists():
            raise CommandError(f"An organization with slug '{slug}' already exists")
        user = None
        if owner:
            user = get_user_model().objects.filter(username=owner).first()
            if user is None:
                raise CommandError(f"No user named '{owner}'")
        try:
            org = organization_create(slug=slug, name=name, owner=user)
        except IntegrityError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Created organization {org.slug} ({org.pk})")
