from django import forms

from accounts.models import Role, TokenScope

ROLE_CHOICES = [(r.value, r.label) for r in (Role.VIEWER, Role.EDITOR, Role.ADMIN, Role.OWNER)]


class InviteForm(forms.Form):
    identifier = forms.CharField(
        label="Username or e-mail", max_length=254,
        widget=forms.TextInput(attrs={"placeholder": "ana or ana@example.com"}),
    )  # fmt: skip
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Role.EDITOR)

    def __init__(self, *args, allow_owner: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not allow_owner:  # only an owner makes owners
            self.fields["role"].choices = [c for c in ROLE_CHOICES if c[0] != Role.OWNER]


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=ROLE_CHOICES)


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, widget=forms.TextInput(attrs={"placeholder": "CI pipeline"})
    )
    scope = forms.ChoiceField(choices=TokenScope.choices, initial=TokenScope.TRIGGER)
    expires_at = forms.DateField(
        label="Expires on", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )


class WebhookForm(forms.Form):
    url = forms.URLField(
        label="URL", max_length=500,
        widget=forms.URLInput(attrs={"placeholder": "https://example.com/hooks/loops"}),
    )  # fmt: skip
    events = forms.MultipleChoiceField(
        required=False,
        choices=[(f"run.{s}", f"run.{s}") for s in
                 ("succeeded", "failed", "cancelled", "waiting", "running", "pending")]
        + [(e, e) for e in ("approval.reminder", "approval.escalated")],
        widget=forms.CheckboxSelectMultiple,
        help_text="None selected means every event.",
    )  # fmt: skip
    loop = forms.ChoiceField(required=False, label="Only for loop")

    def __init__(self, *args, loops=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["loop"].choices = [("", "All loops")] + [(lp.slug, lp.name) for lp in loops]

    @classmethod
    def of(cls, hook, *, loops) -> "WebhookForm":
        """The form filled in with a webhook's settings, to edit them."""
        initial = {
            "url": hook.url,
            "events": hook.events,
            "loop": hook.loop.slug if hook.loop else "",
        }
        return cls(initial=initial, loops=loops)
