"""The API's error answers of a live server (conftest.py), raised as the client's exceptions."""

from collections.abc import Iterator

import httpx
import pytest
from conftest import Server

from loops_client import (
    AuthError,
    Client,
    Conflict,
    InvalidRequest,
    LoopsError,
    NotFound,
    RateLimited,
)


@pytest.fixture
def loops(server: Server) -> Iterator[Client]:
    with Client(server.url, server.token) as client:
        yield client


def test_an_unknown_token_is_an_auth_error_with_the_api_code(server: Server):
    with Client(server.url, "lp_not-a-token") as loops, pytest.raises(AuthError) as caught:
        loops.trigger("greet", {})
    error = caught.value
    assert error.status == 401
    assert error.code == "unauthorized"
    assert "token" in error.message
    assert str(error) == f"401 unauthorized: {error.message}"


def test_a_trigger_token_acting_on_a_run_is_an_auth_error_403(server: Server, loops: Client):
    run = loops.trigger("greet", {"name": "Dee"})
    with Client(server.url, server.trigger_token) as limited:
        assert limited.get_run(run["id"])["id"] == run["id"]  # reading is allowed
        with pytest.raises(AuthError) as caught:
            limited.send_event(run["id"], "go")
    assert caught.value.status == 403
    assert caught.value.code == "forbidden"


def test_an_unknown_loop_or_run_is_not_found(loops: Client):
    with pytest.raises(NotFound) as caught:
        loops.trigger("no-such-loop", {})
    assert caught.value.status == 404
    assert caught.value.code == "not_found"

    with pytest.raises(NotFound) as caught:
        loops.get_run("run_01aaaaaaaaaaaaaaaaaaaaaaaa")
    assert caught.value.code == "not_found"


def test_an_unknown_filter_value_is_an_invalid_request_naming_the_field(loops: Client):
    runs = loops.runs(status="done")  # lazy: the request is made by the first next()
    with pytest.raises(InvalidRequest) as caught:
        next(runs)
    error = caught.value
    assert error.status == 422
    assert error.code == "invalid_filter"
    assert error.fields == ["status"]
    assert "done" in error.message


def test_a_body_of_the_wrong_shape_is_an_invalid_request_with_details(loops: Client):
    with pytest.raises(InvalidRequest) as caught:
        loops.trigger("greet", {}, mode="soon")  # type: ignore[arg-type]
    error = caught.value
    assert error.status == 422
    assert error.code == "validation_error"
    assert error.fields == ["mode"]
    assert error.details[0]["message"]


def test_an_answer_that_does_not_match_the_wait_is_invalid_and_one_too_late_a_conflict(
    loops: Client,
):
    run = loops.trigger("review", {})
    assert loops.poll(run["id"], timeout=60)["pending"]["kind"] == "input"

    with pytest.raises(InvalidRequest) as caught:
        loops.respond(run["id"], "approve")
    assert caught.value.status == 400
    assert caught.value.code == "action_mismatch"

    loops.cancel(run["id"])
    with pytest.raises(Conflict) as caught:
        loops.respond(run["id"], "input", input="late")
    assert caught.value.status == 409
    assert caught.value.code == "not_waiting_for_person"
    with pytest.raises(Conflict) as caught:
        loops.send_event(run["id"], "go")
    assert caught.value.code == "run_ended"


def test_too_many_requests_is_rate_limited_with_retry_after(rate_limited_url: str, server):
    with Client(rate_limited_url, server.token) as loops:
        for _ in range(3):
            loops.list_runs(limit=1)
        with pytest.raises(RateLimited) as caught:
            loops.list_runs(limit=1)
    error = caught.value
    assert error.status == 429
    assert error.code == "rate_limited"
    assert error.retry_after is not None
    assert 1 <= error.retry_after <= 3600


def test_an_answer_that_is_not_the_apis_is_still_a_loops_error(server: Server):
    # A base URL that misses the API: the server's plain 404 page, not the API's envelope.
    with Client(f"{server.url}/nowhere", server.token) as loops, pytest.raises(NotFound) as caught:
        loops.get_run("run_x")
    assert caught.value.status == 404
    assert caught.value.code == "http_404"
    assert "base URL" in caught.value.message
    assert isinstance(caught.value, LoopsError)


def test_a_closed_client_sends_nothing(server: Server):
    with Client(server.url, server.token) as loops:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        loops.get_run("run_x")


def test_network_failures_are_httpx_errors():
    with (
        Client("http://127.0.0.1:9", "lp_x", timeout=5) as loops,
        pytest.raises(httpx.ConnectError),
    ):
        loops.get_run("run_x")
