"""Loop programs compiled for the sandbox, in the worker.

Compiling is not running: the worker parses and compiles the program (RestrictedPython unless
LOOPS_PYTHON_GUARDS is off) and hands each execution its own copy as marshalled bytes, so an
execution pays no compile and no compiled program is ever shared inside the sandbox. The caches
are keyed by organization as well as program, so no organization's entry serves another.
Versions never change, so a version's program is read from the database once per worker.
"""

import base64
import marshal
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings

from loops.models import Loop, LoopVersion
from runs.engine.sandbox.policy import compile_loop
from runs.models import Run


@dataclass(frozen=True)
class Program:
    code: str
    compiled: str  # marshalled code object, base64
    loop_slug: str
    version_number: int | None


def program_of(run: Run) -> Program:
    """The program a run executes: its pinned version's, or its draft (a test run). Raises
    policy.CodeError."""
    guards = settings.LOOPS_PYTHON_GUARDS
    if run.version_id:
        return _version_program(run.organization_id, run.version_id, guards)
    slug = Loop.objects.filter(pk=run.loop_id).values_list("slug", flat=True).get()
    compiled = _compiled(run.organization_id, run.test_code, guards)
    return Program(run.test_code, compiled, slug, None)


@lru_cache(maxsize=256)
def _version_program(organization_id: str, version_id: str, guards: bool) -> Program:
    number, code, slug = (
        LoopVersion.objects.filter(pk=version_id).values_list("number", "code", "loop__slug").get()
    )
    return Program(code, _compiled(organization_id, code, guards), slug, number)


@lru_cache(maxsize=64)
def _compiled(organization_id: str, code: str, guards: bool) -> str:
    return base64.b64encode(marshal.dumps(compile_loop(code, guards=guards))).decode()


def compiled_program(*, organization_id: str, code: str) -> str:
    """A program as an execution loads it (for benchmarks and tools). Raises CodeError."""
    return _compiled(organization_id, code, settings.LOOPS_PYTHON_GUARDS)
