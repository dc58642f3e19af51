"""Public ids: opaque, prefixed and time-sortable (a lower-case ULID behind a prefix).

They are the primary keys too, so no sequential database id ever reaches a URL or an answer.
Each prefix has a named function because migrations need importable defaults.
"""

from django.db import models
from ulid import ULID

ID_LENGTH = 32


def new_id(prefix: str) -> str:
    return f"{prefix}_{str(ULID()).lower()}"


def org_id() -> str:
    return new_id("org")


def loop_id() -> str:
    return new_id("loop")


def version_id() -> str:
    return new_id("ver")


def run_id() -> str:
    return new_id("run")


def step_id() -> str:
    return new_id("step")


def token_id() -> str:
    return new_id("tok")


def batch_id() -> str:
    return new_id("bat")


def scan_id() -> str:
    return new_id("scan")


def hook_id() -> str:
    return new_id("hook")


def schedule_id() -> str:
    return new_id("sch")


def event_id() -> str:
    return new_id("evt")


def delivery_id() -> str:
    return new_id("dlv")


def membership_id() -> str:
    return new_id("mem")


def test_input_id() -> str:
    return new_id("tin")


def bulk_id() -> str:
    return new_id("bulk")


def PublicIdField(default) -> models.CharField:
    return models.CharField(primary_key=True, max_length=ID_LENGTH, default=default, editable=False)
