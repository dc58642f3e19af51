from datetime import date, datetime, time, timedelta

from django import forms
from django.utils import timezone

from runs.models import RunMode, RunStatus, TriggerType


def _blank(choices) -> list:
    return [("", "Any"), *choices]


class RunFilterForm(forms.Form):
    """The runs list filters. They live in the query string, so a filtered list is a link."""

    status = forms.ChoiceField(required=False, choices=_blank(RunStatus.choices))
    trigger = forms.ChoiceField(required=False, choices=_blank(TriggerType.choices))
    mode = forms.ChoiceField(required=False, choices=_blank(RunMode.choices))
    start = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    end = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )
    has_errors = forms.BooleanField(required=False, label="Has errors")
    has_rejected = forms.BooleanField(required=False, label="Has rejected")

    def clean_end(self):
        end = self.cleaned_data["end"]
        if end is not None and end >= date.max:  # the filter ends the day after
            raise forms.ValidationError("Choose a date before 9999-12-31.")
        return end

    def selector_kwargs(self) -> dict:
        data = self.cleaned_data
        start, end = data.get("start"), data.get("end")
        return {
            "status": data.get("status") or None,
            "trigger_type": data.get("trigger") or None,
            "mode": data.get("mode") or None,
            "created_after": _iso(start) if start else None,
            "created_before": _iso(end + timedelta(days=1)) if end else None,
            "has_errors": bool(data.get("has_errors")),
            "step_status": "rejected" if data.get("has_rejected") else None,
        }

    @property
    def active(self) -> bool:
        return self.is_bound and any(self.data.get(name) for name in self.fields)


def _iso(day) -> str:
    return timezone.make_aware(datetime.combine(day, time.min)).isoformat()


class RespondForm(forms.Form):
    action = forms.ChoiceField(
        choices=[("input", "Answer"), ("approve", "Approve"), ("reject", "Reject")]
    )
    value = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs={"rows": 2}))
    reason = forms.CharField(required=False, max_length=1000)


class SaveInputForm(forms.Form):
    name = forms.CharField(max_length=100)


class SaveOutputForm(forms.Form):
    name = forms.CharField(max_length=100)
    path = forms.CharField(max_length=200, required=False)
