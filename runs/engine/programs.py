"""Loop programs compiled for the sandbox, in the worker.

Compiling is not running: the worker parses and compiles the program (RestrictedPython unless
LOOPS_PYTHON_GUARDS is off) and hands each execution its own copy as marshalled bytes, so an
execution pays no compile and no compiled program is ever shared inside the sandbox. The cache
is keyed by organization as well as text, so no organization's entry serves another.
"""

import base64
import marshal
from functools import lru_cache

from django.conf import settings

from runs.engine.sandbox.runtime import compile_loop


@lru_cache(maxsize=64)
def _compiled(organization_id: str, code: str, guards: bool) -> str:
    return base64.b64encode(marshal.dumps(compile_loop(code, guards=guards))).decode()


def compiled_program(*, organization_id: str, code: str) -> str:
    """The program as an execution loads it. Raises runtime.CodeError."""
    return _compiled(organization_id, code, settings.LOOPS_PYTHON_GUARDS)
