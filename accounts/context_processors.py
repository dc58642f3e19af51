from accounts.models import Membership


def organization(request) -> dict:
    membership = getattr(request, "membership", None)
    if not request.user.is_authenticated or not membership:
        return {}
    return {
        "membership": membership,
        "current_org": membership.organization,
        "all_memberships": Membership.objects.select_related("organization").filter(
            user=request.user
        ),
    }
