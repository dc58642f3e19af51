"""Starting, following and acting on runs of a live server (conftest.py) through the client."""

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from conftest import CountingTransport, Server

from loops_client import Client, LoopsError, PollTimeout


@pytest.fixture
def loops(server: Server) -> Iterator[Client]:
    with Client(server.url, server.token) as client:
        yield client


def test_trigger_then_poll_returns_the_succeeded_run_with_its_steps(loops: Client):
    run = loops.trigger("greet", {"name": "Ana"})
    assert run["id"].startswith("run_")
    assert run["loopSlug"] == "greet"
    assert run["input"] == {"name": "Ana"}
    assert run["status"] in {"pending", "running", "succeeded"}

    done = loops.poll(run["id"], timeout=60)

    assert done["id"] == run["id"]
    assert done["status"] == "succeeded"
    assert done["output"] == {"greeting": "Hello, Ana!"}
    assert [(s["name"], s["status"], s["output"]) for s in done["steps"]] == [
        ("Greet", "succeeded", "Hello, Ana!")
    ]
    assert loops.get_run(run["id"])["completedAt"] == done["completedAt"]


def test_poll_returns_a_failed_run_with_its_error(loops: Client):
    run = loops.trigger("greet", {"fail": True})
    done = loops.poll(run["id"], timeout=60)
    assert done["status"] == "failed"
    assert "asked to fail" in done["error"]


def test_live_trigger_answers_the_ended_run(loops: Client):
    run = loops.trigger("greet", {"name": "Ben"}, mode="live", timeout=60)
    assert run["status"] == "succeeded"
    assert run["output"] == {"greeting": "Hello, Ben!"}


def test_the_same_idempotency_key_answers_the_first_run(loops: Client):
    key = f"order-{uuid.uuid4()}"
    first = loops.trigger("greet", {"name": "Cy"}, idempotency_key=key)
    again = loops.trigger("greet", {"name": "someone else"}, idempotency_key=key)
    other = loops.trigger("greet", {"name": "Cy"}, idempotency_key=f"{key}-2")

    assert again["id"] == first["id"]
    assert again["input"] == {"name": "Cy"}
    assert other["id"] != first["id"]


def test_runs_iterates_over_every_page(server: Server):
    transport = CountingTransport()
    with Client(server.url, server.token, transport=transport) as loops:
        loops.trigger("greet", {"name": "not in the batch"})
        batch = loops.batch("greet", [{"name": f"n{i}"} for i in range(7)])
        loops.trigger("greet", {"name": "not in the batch either"})
        assert batch["batchId"].startswith("bat_")
        assert batch["count"] == 7

        runs = list(loops.runs(batch=batch["batchId"], limit=3))
        listed = transport.count("GET", "/api/v1/runs")

        assert len(runs) == 7
        assert len({r["id"] for r in runs}) == 7  # no run twice
        assert {r["batchId"] for r in runs} == {batch["batchId"]}
        assert sorted(r["input"]["name"] for r in runs) == [f"n{i}" for i in range(7)]
        # newest first, as the API sorts by default
        assert [r["createdAt"] for r in runs] == sorted(
            (r["createdAt"] for r in runs), reverse=True
        )
        assert listed == 3  # pages of 3, 3 and 1
        # The filters go to the server: these runs are of loop greet, none of them is
        # of loop review nor cancelled.
        assert len(list(loops.runs(batch=batch["batchId"], loop="greet", limit=2))) == 7
        assert list(loops.runs(batch=batch["batchId"], loop="review")) == []
        assert list(loops.runs(batch=batch["batchId"], status=["cancelled", "waiting"])) == []


def test_list_runs_answers_one_page_with_its_cursor(loops: Client):
    batch = loops.batch("greet", [{}, {}, {}])
    first = loops.list_runs(batch=batch["batchId"], limit=2)
    assert len(first["data"]) == 2
    assert first["hasMore"] is True
    assert first["nextCursor"]
    rest = loops.list_runs(batch=batch["batchId"], limit=2, cursor=first["nextCursor"])
    assert len(rest["data"]) == 1
    assert rest["hasMore"] is False
    assert rest["nextCursor"] is None
    assert {r["id"] for r in first["data"]}.isdisjoint(r["id"] for r in rest["data"])


def test_runs_filters_by_creation_time_given_as_aware_datetimes(loops: Client):
    batch = loops.batch("greet", [{}, {}])
    future = datetime.now(UTC) + timedelta(hours=1)
    assert list(loops.runs(batch=batch["batchId"], created_after=future)) == []
    assert len(list(loops.runs(batch=batch["batchId"], created_before=future))) == 2
    with pytest.raises(ValueError, match="aware"):
        next(loops.runs(created_after=datetime(2026, 1, 1)))  # noqa: DTZ001 - the point


def test_batch_runs_all_execute(loops: Client):
    batch = loops.batch("greet", [{"name": "a"}, {"name": "b"}, {"name": "c"}])
    assert batch["count"] == 3
    ended = [loops.poll(run["id"], timeout=60) for run in loops.runs(batch=batch["batchId"])]
    assert sorted(r["output"]["greeting"] for r in ended) == ["Hello, a!", "Hello, b!", "Hello, c!"]
    assert loops.get_batch(batch["batchId"])["counts"]["succeeded"] == 3


def test_respond_answers_a_question_then_rejects_an_approval(loops: Client):
    run = loops.trigger("review", {})

    asking = loops.poll(run["id"], timeout=60)
    assert asking["status"] == "waiting"
    assert asking["pending"]["kind"] == "input"
    assert asking["pending"]["prompt"] == "Anything to add?"

    answered = loops.respond(run["id"], "input", input="Checked twice")
    assert answered == {"id": run["id"], "status": answered["status"]}
    assert answered["status"] in {"pending", "running"}

    approving = loops.poll(run["id"], timeout=60)
    assert approving["status"] == "waiting"
    assert approving["pending"]["kind"] == "approval"
    assert approving["pending"]["tool"] == "ship"
    assert approving["pending"]["toolInput"] == {"note": "Checked twice"}

    loops.respond(run["id"], "reject", reason="Not on a Friday")
    done = loops.poll(run["id"], timeout=60)
    assert done["status"] == "succeeded"
    assert done["output"] == {
        "note": "Checked twice",
        "approved": False,
        "reason": "Not on a Friday",
    }


def wait_for(predicate, timeout: float = 60.0):
    """Ask until predicate() is truthy (the client's own poll is what some tests check)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        time.sleep(0.1)
    return value


def test_poll_times_out_on_a_run_waiting_for_an_event_and_send_event_ends_it(loops: Client):
    run = loops.trigger("listen", {})
    started = time.monotonic()
    with pytest.raises(PollTimeout) as caught:
        loops.poll(run["id"], timeout=2, initial=0.05, maximum=0.2)
    waited = time.monotonic() - started

    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, LoopsError)
    assert caught.value.code == "poll_timeout"
    assert caught.value.run["id"] == run["id"]
    assert caught.value.run["status"] in {"pending", "running", "waiting"}
    assert 2 <= waited < 5

    waiting = wait_for(lambda: (r := loops.get_run(run["id"]))["status"] == "waiting" and r)
    assert waiting["pending"]["kind"] == "event"
    assert waiting["pending"]["eventType"] == "go"

    event = loops.send_event(run["id"], "go", {"order": 7})
    assert event["id"].startswith("evt_")
    assert event["type"] == "go"
    assert event["consumed"] is True

    done = loops.poll(run["id"], timeout=60)
    assert done["status"] == "succeeded"
    assert done["output"] == {"got": {"order": 7}}


def test_poll_backs_off_with_jitter_and_returns_a_cancelled_run(
    server: Server, monkeypatch: pytest.MonkeyPatch
):
    real_sleep = time.sleep
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        real_sleep(seconds)

    transport = CountingTransport()
    with Client(server.url, server.token, transport=transport) as loops:
        run = loops.trigger("listen", {})
        monkeypatch.setattr(time, "sleep", sleep)
        with pytest.raises(PollTimeout):
            loops.poll(run["id"], timeout=3, initial=0.1, maximum=0.8)
        monkeypatch.undo()

        assert transport.count("GET", f"/api/v1/runs/{run['id']}") == len(pauses) + 1
        assert 4 <= len(pauses) <= 14  # a poll every 0.1 s would ask about 30 times
        # Each pause but the last (cut at the deadline) is drawn from [d/2, d], d doubling
        # from 0.1 up to 0.8, and not always d itself.
        bounds = [min(0.1 * 2**i, 0.8) for i in range(len(pauses) - 1)]
        for pause, bound in zip(pauses, bounds, strict=False):
            assert bound / 2 <= pause <= bound
        assert len({round(p / b, 6) for p, b in zip(pauses, bounds, strict=False)}) > 1

        cancelled = loops.cancel(run["id"])
        assert cancelled["status"] == "cancelled"
        started = time.monotonic()
        assert loops.poll(run["id"], timeout=30)["status"] == "cancelled"
        assert time.monotonic() - started < 1  # an ended run is answered at once
