"""The page a scanned person opens (the scan link): shows the request, takes the result.

The scan id in the link is the credential (80 random bits), like a password-reset link.
"""

import math

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from loops_project import strict_json
from loops_project.errors import DomainError
from runs.models import ScanRequest
from runs.services import scan_submit_result

MEASURES = ("heartRate", "respiratoryRate", "oxygenSaturation", "stressLevel")


@require_http_methods(["GET", "POST"])
def scan_page(request: HttpRequest, scan_id: str) -> HttpResponse:
    scan = ScanRequest.objects.filter(pk=scan_id).first()
    if scan is None:
        raise Http404("No such scan.")
    error = ""
    if request.method == "POST":
        result = {}
        for name in MEASURES:
            raw = request.POST.get(name, "").strip()
            if raw:
                try:
                    result[name] = float(raw)
                except ValueError:
                    result[name] = math.nan
                if not math.isfinite(result[name]):
                    error = f"{name} must be a number."
        extra = request.POST.get("extra", "").strip()
        if extra and not error:
            try:
                more = strict_json.parse(extra, field="extra")
            except strict_json.JsonValueError as exc:
                error = f"Other measures: {exc.message}"
            else:
                if isinstance(more, dict):
                    result.update(more)
                else:
                    error = "Other measures must be a JSON object."
        if not error:
            try:
                scan_submit_result(scan=scan, result=result)
            except DomainError as exc:
                error = exc.message
            else:
                messages.success(request, "Scan result recorded. Thank you.")
                return redirect("scan_page", scan_id=scan.pk)
    return render(request, "runs/scan.html", {"scan": scan, "measures": MEASURES, "error": error})
