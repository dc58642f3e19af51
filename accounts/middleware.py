from django.utils.functional import SimpleLazyObject

from accounts.models import Membership

SESSION_KEY = "current_org"


def current_membership(request) -> Membership | None:
    """The membership for the organization the person is working in (kept in the session)."""
    if not request.user.is_authenticated:
        return None
    memberships = Membership.objects.select_related("organization").filter(user=request.user)
    wanted = request.session.get(SESSION_KEY)
    if wanted:
        chosen = memberships.filter(organization_id=wanted).first()
        if chosen is not None:
            return chosen
    return memberships.order_by("created_at").first()


class CurrentOrganizationMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.membership = SimpleLazyObject(lambda: current_membership(request))
        return self.get_response(request)
