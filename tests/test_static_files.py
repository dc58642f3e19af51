"""Static files in production (DJANGO_DEBUG=0): `collectstatic` names them by their content and
the application serves them itself (WhiteNoise), checked over real HTTP against gunicorn."""

import os
import re
import socket
import subprocess
import sys

import httpx
import pytest
from django.test import Client

from tests.conftest import BASE_DIR, database_url_for_subprocess

HASHED_CSS = re.compile(r'<link rel="stylesheet" href="(/static/loops\.[0-9a-f]{12}\.css)"')
HTMX_SCRIPT = re.compile(r'<script[^>]* src="(/static/[^"]*htmx[^"]*\.js)"')
SECRET_KEY = "static-files-test-secret-key-0123456789abcdefghijklmnopqrstuv"


@pytest.fixture
def production_server(tmp_path, transactional_db):
    """gunicorn with DJANGO_DEBUG=0 on the test database, after `collectstatic` into a
    STATIC_ROOT of its own; yields (base URL, STATIC_ROOT)."""
    static_root = tmp_path / "static"
    env = {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_STATIC_ROOT": str(static_root),
        "DATABASE_URL": database_url_for_subprocess(),
    }
    subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "collectstatic", "--noinput", "-v0"],
        env=env, cwd=BASE_DIR, check=True, timeout=300,
    )  # fmt: skip
    # gunicorn listens on a socket bound here: its port is known and never taken in between.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "loops_project.wsgi", "-w", "1",
         "-b", f"fd://{listener.fileno()}", "--log-level", "warning"],
        env=env, cwd=BASE_DIR, pass_fds=[listener.fileno()],
    )  # fmt: skip
    listener.close()
    try:
        yield base, static_root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_production_serves_hashed_css_and_htmx_after_collectstatic(
    production_server, owner, settings
):
    base, static_root = production_server
    settings.SECRET_KEY = SECRET_KEY  # the server's, which signs the session
    session = Client()
    session.force_login(owner)
    name = settings.SESSION_COOKIE_NAME
    cookies = {name: session.cookies[name].value}
    with httpx.Client(base_url=base, cookies=cookies, timeout=30) as client:
        page = client.get("/loops/")
        assert page.status_code == 200
        css_url = HASHED_CSS.search(page.text)
        htmx_url = HTMX_SCRIPT.search(page.text)
        assert css_url, "the page links no content-hashed loops.css"
        assert htmx_url, "the page loads no htmx script"

        css = client.get(css_url[1], headers={"Accept-Encoding": "gzip"})
        assert css.status_code == 200
        assert css.headers["Content-Type"].startswith("text/css")
        assert css.headers["Content-Encoding"] == "gzip"
        assert css.text == (static_root / css_url[1].removeprefix("/static/")).read_text()
        assert "max-age=315360000" in css.headers["Cache-Control"]
        assert "immutable" in css.headers["Cache-Control"]

        htmx = client.get(htmx_url[1])
        assert htmx.status_code == 200
        assert "javascript" in htmx.headers["Content-Type"]
        assert "htmx" in htmx.text
