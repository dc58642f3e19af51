"""step.http and webhook deliveries under hostile servers: a byte limit on the response, one
total deadline per request (connect, redirects, pages and every read), the run's wall clock, and
refusal of every address that is not public, IPv6 forms that embed an IPv4 address included.

The servers are real, on 127.0.0.1 in this process; requests go through the real worker code
path, with the program running in the sandbox.
"""

import json
import socket
import threading
import time
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from runs import outbound, webhooks
from runs.models import Webhook, WebhookDelivery
from tests.engine_helpers import run_program

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024
CHUNK = b"x" * (64 * 1024)
DRIP_SECONDS = 10  # how long a slow-drip answer would go on if nothing cut it


class HostileServer:
    """An HTTP server on 127.0.0.1 with answers that would hold a careless client:

    /big/<n>            n bytes, streamed without a Content-Length
    /gzip/<n>           n zero bytes, gzip-compressed (a few hundred bytes per MiB)
    /drip-body          headers, then one byte every 0.2 s for DRIP_SECONDS
    /drip-headers       the status line, then the headers one byte every 0.2 s
    /hop/<i>            after 0.4 s, a redirect to /hop/<i+1>; /hop/4 answers 200
    /page/<i>           after 0.4 s, page i with a Link to page i+1 (up to 5)
    /ok                 a small JSON answer
    """

    def __init__(self):
        self.sent = {}  # path -> body bytes written before the client went away
        self.done = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                try:
                    server.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up, which is what these tests want
                finally:
                    server.done.set()

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        if path.startswith("/big/"):
            self.stream(handler, path, int(path.rsplit("/", 1)[1]))
        elif path.startswith("/gzip/"):
            self.gzip(handler, int(path.rsplit("/", 1)[1]))
        elif path == "/drip-body":
            handler.send_response(200)
            handler.send_header("Content-Type", "text/plain")
            handler.end_headers()
            self.drip(handler, b"x" * (DRIP_SECONDS * 5))
        elif path == "/drip-headers":
            handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
            handler.wfile.flush()
            self.drip(handler, b"X-Slow: " + b"y" * (DRIP_SECONDS * 5) + b"\r\n\r\n")
        elif path.startswith("/hop/"):
            time.sleep(0.4)
            hop = int(path.rsplit("/", 1)[1])
            if hop < 4:
                handler.send_response(302)
                handler.send_header("Location", f"/hop/{hop + 1}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
            else:
                self.json(handler, {"hop": hop})
        elif path.startswith("/page/"):
            time.sleep(0.4)
            page = int(path.rsplit("/", 1)[1])
            links = {"Link": f'</page/{page + 1}>; rel="next"'} if page < 5 else {}
            self.json(handler, {"page": page}, links)
        else:
            self.json(handler, {"ok": True})

    def stream(self, handler, path: str, size: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.end_headers()
        self.sent[path] = 0
        while self.sent[path] < size:
            piece = CHUNK[: size - self.sent[path]]
            handler.wfile.write(piece)
            self.sent[path] += len(piece)

    def gzip(self, handler, size: int) -> None:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip format
        zeros = bytes(MiB)
        data = b"".join(packer.compress(zeros) for _ in range(size // MiB)) + packer.flush()
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def drip(self, handler, data: bytes) -> None:
        for i in range(len(data)):
            handler.wfile.write(data[i : i + 1])
            handler.wfile.flush()
            time.sleep(0.2)

    def json(self, handler, body, headers=None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True  # the hostile server is on loopback
    hostile = HostileServer()
    yield hostile
    hostile.close()


def call(url: str, **options) -> str:
    args = "".join(f", {name}={value!r}" for name, value in options.items())
    return f'return step.http("Call", "GET", "{url}"{args}).status'


# --- the response's size ----------------------------------------------------------------------


def test_a_body_over_the_limit_fails_the_step_and_is_never_held_whole(org, server, settings):
    settings.LOOPS_HTTP_MAX_RESPONSE_BYTES = MiB
    size = 64 * MiB
    tracemalloc.start()
    try:
        run = run_program(org, call(f"{server.url}/big/{size}"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.status == "failed"
    error = run.steps.get().error
    assert "LOOPS_HTTP_MAX_RESPONSE_BYTES" in error["message"]
    assert str(MiB) in error["message"]
    # The worker's memory never held the body: far less than its 64 MiB was ever allocated, and
    # the server could not send it all before the worker hung up.
    assert peak < 16 * MiB
    assert server.done.wait(5)
    assert server.sent[f"/big/{size}"] < size


def test_a_compressed_body_is_limited_as_it_inflates(org, server, settings):
    """128 MiB of zeros arrive as 128 KiB of gzip: the limit applies to what it inflates to,
    and no single read inflates to anything near the body's size."""
    settings.LOOPS_HTTP_MAX_RESPONSE_BYTES = MiB
    tracemalloc.start()
    try:
        run = run_program(org, call(f"{server.url}/gzip/{128 * MiB}"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.status == "failed"
    assert "LOOPS_HTTP_MAX_RESPONSE_BYTES" in run.steps.get().error["message"]
    assert peak < 16 * MiB


def test_a_body_at_the_limit_is_read_and_recorded(org, server, settings):
    settings.LOOPS_HTTP_MAX_RESPONSE_BYTES = MiB
    run = run_program(org, f'return len(step.http("Call", "GET", "{server.url}/big/{MiB}").body)')
    assert run.status == "succeeded"
    assert run.output == 64 * 1024  # the recorded text is an excerpt of the whole body


# --- one total deadline -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_slow_drip_answer_is_cut_at_the_total_deadline(org, server, path):
    """A byte every 0.2 s never trips a per-read timeout of 1 s; the total deadline cuts it."""
    run = run_program(org, call(f"{server.url}{path}", timeout=1))
    assert run.status == "failed"
    step = run.steps.get()
    assert "did not finish before its 1 s timeout" in step.error["message"]
    assert 900 <= step.duration_ms < 3000  # the drip would have gone on for DRIP_SECONDS


def test_redirects_share_the_one_deadline(org, server):
    """Five hops of 0.4 s each: every hop is quick, all of them together are not."""
    run = run_program(org, call(f"{server.url}/hop/0", timeout=1))
    assert run.status == "failed"
    step = run.steps.get()
    assert "did not finish before its 1 s timeout" in step.error["message"]
    assert step.duration_ms < 2500


def test_pages_share_the_one_deadline(org, server):
    """Five pages of 0.4 s each, under one deadline of 1 s."""
    url = f"{server.url}/page/1"
    run = run_program(org, f'return len(step.http("Pages", "GET", "{url}", timeout=1, pages=5))')
    assert run.status == "failed"
    step = run.steps.get()
    assert step.status == "failed"
    assert "did not finish before its 1 s timeout" in step.error["message"]
    assert 1 <= len(step.output) < 5  # the pages read in time are kept
    assert step.duration_ms < 2500


def test_a_slow_name_lookup_counts_against_the_deadline(org, server, monkeypatch):
    real_getaddrinfo = socket.getaddrinfo

    def slow_for_one_name(host, *args, **kwargs):
        if host == "slow.example":
            time.sleep(5)
            host = "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_for_one_name)
    port = urlsplit(server.url).port
    run = run_program(org, call(f"http://slow.example:{port}/ok", timeout=1))
    assert run.status == "failed"
    step = run.steps.get()
    assert "did not finish before its 1 s timeout" in step.error["message"]
    assert step.duration_ms < 2500


def test_the_runs_wall_clock_cuts_a_request_that_outlasts_it(org, server, settings):
    settings.LOOPS_WALL_SECONDS = 2
    started = time.monotonic()
    run = run_program(org, call(f"{server.url}/drip-body", timeout=30))
    assert time.monotonic() - started < 8  # not the 10 s of the drip, nor the 30 s timeout
    assert run.status == "failed"
    step = run.steps.get()
    assert "the run's wall-clock limit" in step.error["message"]
    assert "LOOPS_WALL_SECONDS = 2 s" in step.error["message"]
    assert step.duration_ms < 2500


def test_a_request_within_its_deadline_succeeds(org, server):
    """Two hops of 0.4 s each fit in 3 s: the deadline is the request's, not something shorter."""
    run = run_program(org, call(f"{server.url}/hop/3", timeout=3))
    assert run.status == "succeeded"
    assert run.output == 200


def test_an_unusable_timeout_fails_the_step_with_a_clear_error(org, server):
    run = run_program(org, call(f"{server.url}/ok", timeout=-1))
    assert run.status == "failed"
    assert run.steps.get().error["message"] == "timeout must be a positive number of seconds"


# --- addresses that are not public ------------------------------------------------------------

EMBEDDED_IPV4 = [
    "64:ff9b::7f00:1",  # NAT64 well-known prefix, to 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix, to 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 well-known prefix, to 10.0.0.1
    "64:ff9b:1::7f00:1",  # NAT64 local-use prefix
    "64:ff9b:1::808:808",  # NAT64 local-use prefix, even of a public address
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:808:808::1",  # 6to4, even of a public address
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::808:808",  # IPv4-compatible, even of a public address
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",  # IPv4-mapped
    "::ffff:8.8.8.8",  # IPv4-mapped, even of a public address
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001::7f00:1",  # Teredo
    "2607:f8b0::200:5efe:a00:1",  # ISATAP interface id in a global prefix, to 10.0.0.1
    "2607:f8b0::5efe:7f00:1",  # ISATAP interface id, to 127.0.0.1
]
OTHER_IPV6 = ["fec0::1", "fc00::1", "fe80::1", "ff02::1", "::1", "::", "100::1", "2001:db8::1"]
IPV4 = [
    "127.0.0.1",
    "10.0.0.1",
    "169.254.169.254",
    "0.0.0.0",  # noqa: S104 (an address refused, not bound)
    "100.64.0.1",
    "192.0.0.8",
    "192.88.99.1",
    "198.18.0.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
]


def literal_url(address: str) -> str:
    return f"http://[{address}]/" if ":" in address else f"http://{address}/"


@pytest.mark.parametrize("address", EMBEDDED_IPV4 + OTHER_IPV6 + IPV4)
def test_pin_target_refuses_every_address_that_is_not_public(address):
    with pytest.raises(outbound.TargetRefused, match="only public internet addresses"):
        outbound.pin_target(literal_url(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_pin_target_allows_public_addresses_and_nat64_of_a_public_ipv4(address):
    pinned, _, _ = outbound.pin_target(literal_url(address))
    assert pinned == literal_url(address)


@pytest.mark.parametrize("address", [*EMBEDDED_IPV4, "fec0::1"])
def test_a_step_to_an_ipv6_form_embedding_ipv4_is_refused(org, address):
    run = run_program(org, call(literal_url(address), timeout=2))
    assert run.status == "failed"
    step = run.steps.get()
    assert "only public internet addresses are allowed" in step.error["message"]
    assert step.duration_ms < 1000  # refused before any connection was tried


def test_allow_private_lets_the_embedding_forms_through_to_the_checked_address(settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    pinned, host, _ = outbound.pin_target("http://[::ffff:127.0.0.1]:8080/x")
    assert (pinned, host) == ("http://[::ffff:127.0.0.1]:8080/x", "[::ffff:127.0.0.1]:8080")


# --- webhook deliveries -----------------------------------------------------------------------


def delivery_to(org, url: str) -> WebhookDelivery:
    hook = Webhook.objects.create(organization=org, url=url, secret="whsec_test")
    return WebhookDelivery.objects.create(webhook=hook, event="run.succeeded", payload={})


def test_a_webhook_delivery_stops_reading_at_the_limit(org, server, settings):
    settings.LOOPS_HTTP_MAX_RESPONSE_BYTES = MiB
    settings.LOOPS_WEBHOOK_MAX_ATTEMPTS = 1
    delivery = delivery_to(org, f"{server.url}/big/{64 * MiB}")
    assert webhooks.deliver(delivery.pk) == "attempt 1 failed"
    delivery.refresh_from_db()
    assert "LOOPS_HTTP_MAX_RESPONSE_BYTES" in delivery.error
    assert server.done.wait(5)
    assert server.sent[f"/big/{64 * MiB}"] < 64 * MiB


def test_a_webhook_delivery_is_cut_at_its_total_deadline(org, server, settings, monkeypatch):
    settings.LOOPS_WEBHOOK_MAX_ATTEMPTS = 1
    monkeypatch.setattr(webhooks, "DELIVERY_TIMEOUT_SECONDS", 1)
    delivery = delivery_to(org, f"{server.url}/drip-body")
    started = time.monotonic()
    assert webhooks.deliver(delivery.pk) == "attempt 1 failed"
    assert time.monotonic() - started < 3
    delivery.refresh_from_db()
    assert "did not finish before its 1 s timeout" in delivery.error
