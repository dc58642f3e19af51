from django.core.checks import Error, Tags, Warning, register

from runs.engine.zygote import SandboxError, bwrap_works, sandbox_mode


@register(Tags.security, deploy=False)
def sandbox_check(app_configs, **kwargs):
    """Without bubblewrap, loop code runs in a plain process: say so loudly."""
    try:
        mode = sandbox_mode()
    except SandboxError as exc:
        return [Error(str(exc), id="loops.E001")]
    if mode == "bwrap":
        return []
    message = (
        "Bubblewrap (bwrap) is not available: loop code runs in a plain process without "
        "filesystem, PID and network namespaces. Install it (apt-get install bubblewrap)."
    )
    return [Warning(message, id="loops.W001", hint="Fine on a laptop; never in production.")]


@register(Tags.security, deploy=True)
def sandbox_deploy_check(app_configs, **kwargs):
    """`check --deploy`: a missing bubblewrap is an error."""
    if bwrap_works():
        return []
    return [Error("Bubblewrap (bwrap) is required in production.", id="loops.E002")]
