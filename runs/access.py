from django.http import Http404

from accounts.models import Organization
from runs.models import Batch, Run, ScanRequest, Step, Webhook


def get_run_for(org: Organization, run_id: str) -> Run:
    run = (
        Run.objects.for_org(org)
        .select_related("loop", "version", "organization")
        .filter(pk=run_id)
        .first()
    )
    if run is None:
        raise Http404("No such run.")
    return run


def get_step_for(run: Run, step_id: str) -> Step:
    step = Step.objects.filter(run=run, pk=step_id).first()
    if step is None:
        raise Http404("No such step.")
    return step


def get_batch_for(org: Organization, batch_id: str) -> Batch:
    batch = Batch.objects.filter(organization=org, pk=batch_id).first()
    if batch is None:
        raise Http404("No such batch.")
    return batch


def get_scan_for(org: Organization, scan_id: str) -> ScanRequest:
    scan = ScanRequest.objects.filter(organization=org, pk=scan_id).first()
    if scan is None:
        raise Http404("No such scan.")
    return scan


def get_webhook_for(org: Organization, hook_id: str) -> Webhook:
    hook = Webhook.objects.select_related("loop").filter(organization=org, pk=hook_id).first()
    if hook is None:
        raise Http404("No such webhook.")
    return hook
