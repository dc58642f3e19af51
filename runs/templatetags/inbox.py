"""The inbox in every page: the navigation's count, and whether this member may answer what a
run waits for (its run page shows the answer forms, or who it is assigned to)."""

from django import template

from runs.inbox import assignees_text, refusal, waiting_count

register = template.Library()


@register.simple_tag(takes_context=True)
def inbox_count(context) -> int:
    """How many runs of the current organization wait for a person (one indexed COUNT), unless
    the page has counted them already (the unfiltered inbox)."""
    if context.get("inbox_waiting") is not None:
        return context["inbox_waiting"]
    membership = context.get("membership")
    return waiting_count(membership.organization) if membership else 0


@register.simple_tag
def answer_refusal(pending, membership, user) -> str:
    """Why this member may not answer the run's question or approval; empty if they may."""
    if not membership:
        return ""
    return refusal(pending, role=membership.role, username=user.get_username()) or ""


register.filter("assignees_text", assignees_text)
