from django import forms
from django_ace import AceWidget

from loops.demo import GREETING_CODE

STARTER_CODE = GREETING_CODE


def code_widget() -> AceWidget:
    return AceWidget(mode="python", width="100%", height="480px", showprintmargin=False,
                     fontsize="13px", toolbar=False)  # fmt: skip


class JsonInput(forms.JSONField):
    """A JSON value typed into a textarea; empty means {}."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        kwargs.setdefault(
            "widget", forms.Textarea(attrs={"rows": 4, "class": "mono", "spellcheck": "false"})
        )
        super().__init__(**kwargs)

    def to_python(self, value):
        if isinstance(value, str) and not value.strip():
            return {}
        return super().to_python(value)


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
        widget=forms.TextInput(attrs={"placeholder": "greeting"}),
    )  # fmt: skip
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    field_order = ["name", "slug", "description", "code", "note"]


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


class ScheduleForm(forms.Form):
    cron = forms.CharField(
        max_length=100, label="Cron",
        widget=forms.TextInput(attrs={"placeholder": "*/15 * * * *", "class": "mono"}),
        help_text="minute hour day month weekday",
    )  # fmt: skip
    timezone = forms.CharField(max_length=64, initial="UTC", label="Time zone")
    input = JsonInput(label="Input (JSON)")
    enabled = forms.BooleanField(required=False, initial=True)
