from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from runs.engine.zygote_client import SandboxError, bwrap_works, sandbox_identity, sandbox_mode


@register(Tags.security, deploy=False)
def sandbox_check(app_configs, **kwargs):
    """Without bubblewrap, loop code runs in a plain process: say so loudly. Nor may loop code
    ever run as root."""
    problems = []
    try:
        mode = sandbox_mode()
    except SandboxError as exc:
        return [Error(str(exc), id="loops.E001")]
    if mode != "bwrap":
        message = (
            "Bubblewrap (bwrap) is not available: loop code runs in a plain process without "
            "filesystem, PID and network namespaces. Install it (apt-get install bubblewrap)."
        )
        problems.append(
            Warning(message, id="loops.W001", hint="Fine on a laptop; never in production.")
        )
    identity = sandbox_identity()
    if identity is not None and 0 in identity:
        problems.append(
            Error(
                f"LOOPS_SANDBOX_USER={settings.LOOPS_SANDBOX_USER!r} is root: loop code must "
                "never run as root.",
                id="loops.E004",
            )
        )
    elif identity == (65534, 65534) and str(settings.LOOPS_SANDBOX_USER) != "65534":
        problems.append(
            Warning(
                f"The sandbox user {settings.LOOPS_SANDBOX_USER!r} does not exist: loop code "
                "runs as nobody (65534), which other services may share.",
                id="loops.W002",
                hint="Create it: useradd --system --no-create-home --shell /usr/sbin/nologin "
                f"{settings.LOOPS_SANDBOX_USER} (scripts/dev does).",
            )
        )
    return problems


@register(Tags.security, deploy=True)
def sandbox_deploy_check(app_configs, **kwargs):
    """`check --deploy`: every layer of the sandbox is required in production."""
    problems = []
    if not bwrap_works():
        problems.append(Error("Bubblewrap (bwrap) is required in production.", id="loops.E002"))
    if not settings.LOOPS_PYTHON_GUARDS:
        problems.append(
            Error(
                "LOOPS_PYTHON_GUARDS is off: loop code runs as plain Python. It is meant for "
                "testing the sandbox's other layers only.",
                id="loops.E003",
            )
        )
    if settings.LOOPS_MAX_PROCESSES > 1:
        problems.append(
            Warning(
                f"LOOPS_MAX_PROCESSES={settings.LOOPS_MAX_PROCESSES}: executions may fork, and "
                "their memory and CPU limits then hold per process, not per execution.",
                id="loops.W003",
                hint="Keep it at 1 unless loops need processes (SECURITY.md).",
            )
        )
    return problems
