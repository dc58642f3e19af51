from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput, JSONString
from django_ace import AceWidget

from accounts.models import CONCURRENCY_LIMIT_MAX
from loops.demo import GREETING_CODE
from loops.models import Loop
from loops.schedules import zone
from loops_project import strict_json
from loops_project.errors import Invalid

STARTER_CODE = GREETING_CODE


def code_widget() -> AceWidget:
    # useStrictCSP: the editor's CSS comes from its stylesheet, not from <style> elements it
    # would inject (the Content-Security-Policy admits no inline style element).
    return AceWidget(mode="python", width="100%", height="480px", showprintmargin=False,
                     fontsize="13px", toolbar=False, useStrictCSP=True)  # fmt: skip


class JsonInput(forms.JSONField):
    """A JSON value typed into a textarea; empty means {}. As strict as the API's JSON
    (loops_project.strict_json): a value Loops cannot store is this field's error."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault(
            "widget", forms.Textarea(attrs={"rows": 4, "class": "mono", "spellcheck": "false"})
        )
        super().__init__(**kwargs)

    def to_python(self, value):
        if self.disabled or not isinstance(value, str):
            return value
        if not value.strip():
            return {}
        try:
            parsed = strict_json.parse(value, field="input")
        except strict_json.JsonValueError as exc:
            raise ValidationError(exc.message, code=exc.code) from None
        return JSONString(parsed) if isinstance(parsed, str) else parsed

    def bound_data(self, data, initial):
        if self.disabled:
            return initial
        if data is None:
            return None
        try:
            return strict_json.parse(data, field="input")
        except strict_json.JsonValueError:
            return InvalidJSONInput(data)


class CodeForm(forms.Form):
    code = forms.CharField(widget=code_widget(), strip=False)
    note = forms.CharField(
        required=False, max_length=500,
        widget=forms.TextInput(attrs={"placeholder": "What changed? (shown in the history)"}),
    )  # fmt: skip


class LoopCreateForm(CodeForm):
    name = forms.CharField(
        max_length=200, widget=forms.TextInput(attrs={"placeholder": "Greeting"})
    )
    slug = forms.SlugField(
        max_length=64, help_text="Part of the trigger URL: lower-case letters, digits, hyphens.",
        widget=forms.TextInput(attrs={"placeholder": "greeting", "data-slug-from": "id_name"}),
    )  # fmt: skip
    description = forms.CharField(
        required=False, max_length=Loop._meta.get_field("description").max_length,
        widget=forms.Textarea(attrs={"rows": 2}),
    )  # fmt: skip

    field_order = ["name", "slug", "description", "code", "note"]


class LoopSettingsForm(forms.Form):
    concurrency_limit = forms.IntegerField(
        required=False, min_value=1, max_value=CONCURRENCY_LIMIT_MAX, label="Concurrency limit",
        widget=forms.NumberInput(attrs={"placeholder": "No limit"}),
        help_text="At most this many runs of the loop at once; empty for no limit. Runs over the "
        "limit wait as pending and start as others end; waiting runs hold no slot.",
    )  # fmt: skip


class TestRunForm(forms.Form):
    code = forms.CharField(strip=False)
    input = JsonInput(label="Input (JSON)")
    test_input = forms.ChoiceField(required=False, label="Saved input")

    def __init__(self, *args, test_inputs=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["test_input"].choices = [("", "— pasted input —")] + [
            (t.pk, t.name) for t in test_inputs
        ]


class TriggerForm(forms.Form):
    input = JsonInput(label="Input (JSON)")


class SaveTestInputForm(forms.Form):
    name = forms.CharField(max_length=100)


def clean_timezone(name: str) -> str:
    try:
        zone(name)
    except Invalid as exc:
        raise ValidationError(exc.message, code=exc.code) from None
    return name


class ScheduleForm(forms.Form):
    cron = forms.CharField(
        max_length=100, label="Cron",
        widget=forms.TextInput(attrs={"placeholder": "*/15 * * * *", "class": "mono"}),
        help_text="minute hour day month weekday",
    )  # fmt: skip
    timezone = forms.CharField(max_length=64, initial="UTC", label="Time zone")
    input = JsonInput(label="Input (JSON)")
    enabled = forms.BooleanField(required=False, initial=True)

    def clean_timezone(self) -> str:
        return clean_timezone(self.cleaned_data["timezone"])


class CronPreviewForm(forms.Form):
    """The schedule form's cron and time zone, previewed as they are typed."""

    cron = forms.CharField(max_length=100, required=False)
    timezone = forms.CharField(max_length=64, required=False)

    def clean_timezone(self) -> str:
        return clean_timezone(self.cleaned_data["timezone"].strip() or "UTC")
