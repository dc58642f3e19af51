"""The isolation layers end to end: hostile plain-Python loops deployed and triggered over real
HTTP, executed by a real django-q2 cluster (guards off, forks allowed), then another
organization's runs on the same workers."""

import os
import secrets

import httpx
import pytest

from tests.conftest import Cluster, send_work_to, wait_until
from tests.factories import make_token
from tests.test_isolation import DAEMON, LOOK_AROUND, host_processes_named

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def plain_python_worker(transactional_db, monkeypatch, settings):
    """A worker cluster of its own with the Python guards off and forks allowed: only the OS
    layers stand between its executions."""
    settings.LOOPS_PYTHON_GUARDS = False  # the web process validates deploys the same way
    queue_name = f"test-plain-{os.getpid()}"
    cluster = Cluster(
        {"LOOPS_QUEUE": queue_name, "LOOPS_PYTHON_GUARDS": "0", "LOOPS_MAX_PROCESSES": "8"}
    )
    send_work_to(monkeypatch, queue_name)
    yield cluster
    cluster.stop()


def client(live_server, org) -> httpx.Client:
    return httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {make_token(org)}"}, timeout=60
    )


def deploy_and_run(api: httpx.Client, slug: str, body: str, run_input: dict) -> dict:
    code = "class L(Loop):\n    def run(self, event, step):\n" + "".join(
        f"        {line}\n" for line in body.strip("\n").splitlines()
    )
    assert (
        api.post("/api/v1/loops", json={"slug": slug, "name": slug, "code": code}).status_code
        == 201
    )
    run_id = api.post(f"/api/v1/loops/{slug}/runs", json={"input": run_input}).json()["data"]["id"]

    def ended():
        run = api.get(f"/api/v1/runs/{run_id}").json()["data"]
        return run if run["status"] in ("succeeded", "failed") else None

    return wait_until(ended, timeout=60)


def test_a_hostile_run_leaves_nothing_for_the_next_organization(
    plain_python_worker, live_server, org, other_org
):
    marker = "loopsd" + secrets.token_hex(4)
    with client(live_server, org) as acme, client(live_server, other_org) as globex:
        hostile = deploy_and_run(acme, "daemon", DAEMON, {"marker": marker})
        assert hostile["status"] == "succeeded", hostile["error"]
        assert hostile["output"] == "daemon running"
        assert wait_until(lambda: not host_processes_named(marker), timeout=5)

        seen = deploy_and_run(globex, "looker", LOOK_AROUND, {})
        assert seen["status"] == "succeeded", seen["error"]
        assert seen["output"]["tmp"] == []
        assert seen["output"]["pids"] == [1]
        assert marker not in seen["output"]["names"]

        token = secrets.token_hex(4)
        echo = deploy_and_run(globex, "echo", "return event.body", {"token": token})
        assert echo["output"] == {"token": token}
