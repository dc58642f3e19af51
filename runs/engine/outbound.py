"""Outbound HTTP made by the worker (step.http, webhooks), refusing internal targets.

Every hop (the first request and each redirect) resolves the host once, refuses loopback,
private, link-local and other non-public addresses unless LOOPS_HTTP_ALLOW_PRIVATE is on,
and then connects to exactly the address that was checked, so a DNS answer that changes
between check and connect (rebinding) cannot reach an internal service.
"""

import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx
from django.conf import settings

MAX_REDIRECTS = 5
MAX_BODY_BYTES = 10 * 1024 * 1024


class TargetRefused(Exception):
    pass


def _addresses(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetRefused(f"cannot resolve host '{host}': {exc.strerror}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def pin_target(url: str) -> tuple[str, str, str]:
    """Check a URL's target; return (url with the checked IP, Host header, hostname)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(f"only http and https URLs are allowed, not '{url[:200]}'")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _addresses(host, port)
    if not settings.LOOPS_HTTP_ALLOW_PRIVATE:
        for address in addresses:
            if not _is_public(address):
                raise TargetRefused(
                    f"requests to {host} ({address}) are refused: loopback, private and "
                    "link-local addresses are not allowed"
                )
    address = addresses[0]
    netloc_ip = f"[{address}]" if ":" in address else address
    if parts.port:
        netloc_ip += f":{parts.port}"
    host_header = host if not parts.port else f"{host}:{parts.port}"
    pinned = parts._replace(netloc=netloc_ip).geturl()
    return pinned, host_header, host


def request(method: str, url: str, *, headers=None, params=None, json=None, content=None,
            timeout: float | None = None) -> tuple[httpx.Response, str]:  # fmt: skip
    """Make a request, following redirects hop by hop. Returns the response and final URL."""
    timeout = min(float(timeout or settings.LOOPS_HTTP_TIMEOUT_SECONDS), 120.0)
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            pinned, host_header, hostname = pin_target(current)
            response = client.request(
                method,
                pinned,
                headers={**(headers or {}), "Host": host_header},
                params=params,
                json=json,
                content=content,
                extensions={"sni_hostname": hostname},
            )
            if response.is_redirect and "location" in response.headers:
                current = urljoin(current, response.headers["location"])
                if response.status_code in (301, 302, 303):
                    method, json, content = "GET", None, None
                params = None
                continue
            return response, current
    raise TargetRefused(f"more than {MAX_REDIRECTS} redirects")
