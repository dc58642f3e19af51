"""Outbound HTTP made by the worker (step.http, webhooks), refusing internal targets.

Every hop (the first request and each redirect) resolves the host once, refuses every address
that is not globally reachable unless LOOPS_HTTP_ALLOW_PRIVATE is on, and then connects to
exactly the address that was checked, so a DNS answer that changes between check and connect
(rebinding) cannot reach an internal service.

A request has one total deadline: resolving, connecting, every redirect hop, every write and
every read must all end by it. httpx's own timeouts apply to each socket operation alone, so a
server that sends a byte a second would hold the worker for as long as it liked; here each
operation only gets what is left of the deadline. The response body is streamed in small
reads and reading stops at LOOPS_HTTP_MAX_RESPONSE_BYTES (counted after decompression), so the
worker's memory stays bounded whatever the server sends.
"""

import codecs
import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import cache
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
from django.conf import settings

MAX_REDIRECTS = 5
READ_BYTES = 4 * 1024  # per socket read

# Global unicast is 2000::/3; nothing outside it is a public internet host, except the NAT64
# well-known prefix, which is globally reachable and only ever embeds a public IPv4 address
# (RFC 6052): on an IPv6-only network DNS64 answers with it for every IPv4-only host, so it is
# judged by the IPv4 address it carries. Every other form that embeds one (IPv4-mapped and
# -compatible, SIIT, local-use NAT64, 6to4, Teredo, ISATAP) is refused whatever it carries.
_IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
# Inside 2000::/3, ranges that are not global or that tunnel to an embedded IPv4 address, listed
# here because older Pythons' ipaddress tables miss some of them (3.12.1 calls 2002::/16 global).
_IPV6_REFUSED = tuple(
    ipaddress.ip_network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments, Teredo (2001::/32) among them
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4: the embedded IPv4 address is the tunnel's end
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_IPV4_REFUSED = tuple(
    ipaddress.ip_network(net)
    for net in (
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "224.0.0.0/4",  # multicast
    )
)


class OutboundError(Exception):
    """A request the worker refused or gave up on; the message is meant for the loop's author."""


class TargetRefused(OutboundError):
    pass


class ResponseTooLarge(OutboundError):
    pass


class DeadlineExceeded(OutboundError):
    pass


@dataclass(frozen=True)
class Deadline:
    """The time.monotonic() instant by which a whole request must be over, and what it is
    (named in the error when it is reached)."""

    at: float
    reason: str

    @classmethod
    def after(cls, seconds: float, reason: str | None = None) -> "Deadline":
        return cls(time.monotonic() + seconds, reason or f"its {seconds:g} s timeout")

    def seconds_left(self, error: type[Exception] = httpcore.ReadTimeout) -> float:
        """What is left of the deadline; raises `error` once nothing is."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise error(f"the deadline ({self.reason}) was reached")
        return left


@dataclass(frozen=True)
class Reply:
    """A response read in full (within the byte limit)."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    encoding: str
    links: dict
    url: str  # the URL that answered, as the program wrote it (not the pinned address)

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding, errors="replace")


# --- which addresses may be reached -----------------------------------------------------------


def _is_public_v4(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not any(ip in net for net in _IPV4_REFUSED)


def _is_isatap(ip: ipaddress.IPv6Address) -> bool:
    # An ISATAP interface id (…:0:5efe:a.b.c.d or …:200:5efe:a.b.c.d) tunnels to its IPv4 address.
    interface_id = ip.packed[8:12]
    return interface_id in (b"\x00\x00\x5e\xfe", b"\x02\x00\x5e\xfe")


def _is_public_v6(ip: ipaddress.IPv6Address) -> bool:
    if ip in _NAT64_WELL_KNOWN:  # the gateway connects to the IPv4 address in the low 32 bits
        return _is_public_v4(ipaddress.IPv4Address(ip.packed[12:]))
    return (
        ip in _IPV6_GLOBAL_UNICAST
        and ip.is_global
        and not any(ip in net for net in _IPV6_REFUSED)
        and not _is_isatap(ip)
    )


def _is_public(address: str) -> bool:
    """Whether an address is a public internet host, including what an IPv6 address embeds."""
    if "%" in address:  # a zone id only exists on link-local and other scoped addresses
        return False
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        return _is_public_v4(ip)
    return _is_public_v6(ip)


def _resolve(host: str, port: int, deadline: Deadline) -> list[str]:
    # getaddrinfo has no timeout of its own, and a slow name server is part of the request's
    # time: the lookup runs in a thread that is left to finish on its own if the deadline passes.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loops-dns")
    future = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    pool.shutdown(wait=False)
    try:
        infos = future.result(timeout=deadline.seconds_left(httpcore.ConnectTimeout))
    except FutureTimeout:
        raise httpcore.ConnectTimeout(f"resolving {host} took too long") from None
    except (OSError, UnicodeError, ValueError) as exc:  # gaierror, a bad IDNA name, a NUL
        reason = getattr(exc, "strerror", None) or str(exc)
        raise TargetRefused(f"cannot resolve host '{host}': {reason}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def pin_target(url: str, deadline: Deadline | None = None) -> tuple[str, str, str]:
    """Check a URL's target; return (url with the checked IP, Host header, hostname)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise TargetRefused(f"invalid URL '{url[:200]}': {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise TargetRefused(f"only http and https URLs are allowed, not '{url[:200]}'")
    default_port = 443 if parts.scheme == "https" else 80
    addresses = _resolve(host, port or default_port, deadline or Deadline.after(30))
    if not settings.LOOPS_HTTP_ALLOW_PRIVATE:
        for address in addresses:
            if not _is_public(address):
                raise TargetRefused(
                    f"requests to {host} ({address}) are refused: only public internet "
                    "addresses are allowed (not loopback, private, link-local, reserved, or an "
                    "IPv6 form that embeds an IPv4 address)"
                )
    address = addresses[0]
    netloc_ip = f"[{address}]" if ":" in address else address
    if port:
        netloc_ip += f":{port}"
    host_header = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    if port:
        host_header += f":{port}"
    pinned = parts._replace(netloc=netloc_ip).geturl()
    return pinned, host_header, host


# --- one total deadline for every socket operation --------------------------------------------


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # Small reads: httpx inflates a compressed body one read at a time, and deflate turns
        # a read into up to ~1000 times as much, all before the byte limit can be checked.
        left = self._deadline.seconds_left(httpcore.ReadTimeout)
        return self._stream.read(min(max_bytes, READ_BYTES), left)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.seconds_left(httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> "_DeadlineStream":
        left = self._deadline.seconds_left(httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, left), self._deadline
        )

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: Deadline) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        left = self._deadline.seconds_left(httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


@cache
def _ssl_context():
    # Loading the CA bundle takes milliseconds; one context serves every connection.
    return httpx.create_ssl_context(trust_env=False)


class _DeadlineTransport(httpx.HTTPTransport):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        # httpx 0.28 cannot hand its connection pool a network backend (encode/httpx#3749 would
        # add that), so the pool it built is replaced by one over the deadline backend.
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(), network_backend=_DeadlineBackend(deadline)
        )


# --- the request --------------------------------------------------------------------------------


def _encoding(response: httpx.Response) -> str:
    charset = response.charset_encoding or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        return "utf-8"
    return charset


def _read(response: httpx.Response, url: str, max_bytes: int) -> Reply:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ResponseTooLarge(
                f"the response from {url} is larger than LOOPS_HTTP_MAX_RESPONSE_BYTES "
                f"({max_bytes} bytes); reading stopped there"
            )
        chunks.append(chunk)
    return Reply(
        status_code=response.status_code,
        headers=response.headers,
        content=b"".join(chunks),
        encoding=_encoding(response),
        links=response.links,
        url=url,
    )


def _send(client: httpx.Client, method: str, url: str, deadline: Deadline, **kwargs):
    pinned, host_header, hostname = pin_target(url, deadline)
    headers = {**(kwargs.pop("headers") or {}), "Host": host_header}
    try:
        built = client.build_request(
            method, pinned, headers=headers, extensions={"sni_hostname": hostname}, **kwargs
        )
    except (httpx.InvalidURL, UnicodeError, TypeError, ValueError) as exc:
        raise OutboundError(f"invalid request to {url[:200]}: {exc}") from None
    return client.send(built, stream=True)


def request(
    method: str,
    url: str,
    *,
    deadline: Deadline,
    max_bytes: int | None = None,
    headers: dict | None = None,
    params=None,
    json=None,
    content: str | bytes | None = None,
) -> Reply:
    """Make a request, following redirects hop by hop, all of it by `deadline`; the body is
    read up to `max_bytes` (LOOPS_HTTP_MAX_RESPONSE_BYTES by default). Raises OutboundError
    (refused target, deadline, body too large) or httpx.HTTPError (the connection failed)."""
    if max_bytes is None:
        max_bytes = settings.LOOPS_HTTP_MAX_RESPONSE_BYTES
    current = url
    transport = _DeadlineTransport(deadline)
    try:
        # No per-operation timeout: the transport gives each operation what is left of the
        # request's one deadline.
        client = httpx.Client(transport=transport, timeout=None, trust_env=False)  # noqa: S113
        with client:
            for _ in range(MAX_REDIRECTS + 1):
                response = _send(
                    client, method, current, deadline,
                    headers=headers, params=params, json=json, content=content,
                )  # fmt: skip
                try:
                    if not (response.is_redirect and "location" in response.headers):
                        return _read(response, current, max_bytes)
                    current = urljoin(current, response.headers["location"])
                finally:
                    response.close()  # a redirect's body is never read
                if response.status_code in (301, 302, 303):
                    method, json, content = "GET", None, None
                params = None
    except (httpx.TimeoutException, httpcore.TimeoutException):
        raise DeadlineExceeded(
            f"{method} {current[:200]} did not finish before {deadline.reason} was reached "
            "(connecting, redirects and reading the response count together)"
        ) from None
    raise TargetRefused(f"more than {MAX_REDIRECTS} redirects")
