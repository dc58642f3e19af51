"""(b, information) Instructions of the web process per trigger, counted by callgrind.

Throughput on these shared machines moves ±30 % from one run to the next; instruction counts do
not. This script drives Django's WSGI handler in-process (no server, no network) with the
trigger URL's request, N times, under `valgrind --tool=callgrind`, and prints instructions per
request: (N_high - N_low) requests' difference, so set-up and warm-up cancel out. PostgreSQL's
own work is in another process and not counted. Cases:
  - statement: POST /api/loop/{org}/{loop}, the common case (runs/trigger_statement.py);
  - operation: the same with `?mode=async`, which takes the API's operation (runs.api.trigger);
  - 401: the same without a token (anchor: the web stack without database work).

    .venv/bin/python bench/trigger_instructions.py [--low 50] [--high 250]

Needs valgrind (on every machine of this kind). About 5 minutes: two valgrind runs per case,
side by side.
"""

import argparse
import io
import logging
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

BODY = b'{"name": "load", "source": "bench"}'
CASES = {"statement": ("", True), "operation": ("mode=async", True), "401": ("", False)}


def drive(case: str, count: int) -> None:
    """Inside valgrind: set up, warm up, then `count` requests of the case."""
    common.setup()
    logging.disable(logging.CRITICAL)  # 401s log a warning each
    from django.core.handlers.wsgi import WSGIHandler

    from bench.api_load import clean

    org, loop, raw = common.seed("bench-api")
    query, with_token = CASES[case]
    handler = WSGIHandler()

    def request() -> None:
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": f"/api/loop/{org.slug}/{loop.slug}",
            "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
            "HTTP_HOST": "127.0.0.1:8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(BODY)),
            "wsgi.input": io.BytesIO(BODY), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
        }  # fmt: skip
        if with_token:
            environ["HTTP_AUTHORIZATION"] = f"Bearer {raw}"
        statuses = []
        response = handler(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(response)
        response.close()
        assert statuses[0][:3] == ("202" if with_token else "401"), statuses

    for _ in range(30 + count):
        request()
    clean(org)  # one SQL DELETE: its cost must not grow with the count


def instructions(case: str, count: int) -> int:
    cmd = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--drive", case, "--count", str(count),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
    match = re.search(r"Collected : (\d+)", out.stderr)
    assert match, out.stderr[-2000:]
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--low", type=int, default=50)
    parser.add_argument("--high", type=int, default=250)
    parser.add_argument("--drive", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.count)
        return 0
    if not shutil.which("valgrind"):
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    common.setup()  # migrate once, outside valgrind
    per_request = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for case in CASES:
            low, high = pool.map(lambda n, case=case: instructions(case, n), (args.low, args.high))
            per_request[case] = (high - low) / (args.high - args.low)
            print(f"{case}: {per_request[case]:,.0f} instructions per request", flush=True)
    anchor = per_request["401"]
    common.print_table(
        "(b, information) instructions of the web process per trigger (callgrind, in-process)",
        [
            {
                "figure": f"trigger, {case}",
                "result": f"{per_request[case] / 1e6:.2f} M",
                "anchor": f"401 {anchor / 1e6:.2f} M",
                "ratio": f"{per_request[case] / anchor:.2f}x",
                "target": "-",
                "ok": True,
            }
            for case in ("statement", "operation")
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
