"""Browser-only fixtures: a page logged in as a given user, and screenshots for the docs."""

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

BASE_DIR = Path(__file__).resolve().parents[2]
# Tests never change tracked files: screenshots go to var/ unless LOOPS_REFRESH_SCREENSHOTS=1
# asks for the committed ones in docs/ to be refreshed.
SCREENSHOTS = (
    BASE_DIR / "docs" / "screenshots"
    if os.environ.get("LOOPS_REFRESH_SCREENSHOTS") == "1"
    else BASE_DIR / "var" / "screenshots"
)


@pytest.fixture
def login(live_server, page):
    """Log a user in by giving the browser a real session cookie (the login form itself is
    exercised by its own test)."""

    def log_in(user):
        client = Client()
        client.force_login(user)
        page.context.add_cookies([{
            "name": settings.SESSION_COOKIE_NAME,
            "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
            "url": live_server.url,
        }])  # fmt: skip
        return page

    page.set_viewport_size({"width": 1366, "height": 860})
    page.set_default_timeout(20_000)
    return log_in


@pytest.fixture
def screenshot(page):
    def shot(name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    return shot
