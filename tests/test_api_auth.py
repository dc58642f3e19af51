"""Authentication, scopes, rate limits, body limits, bad JSON and the OpenAPI document."""

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from accounts.models import TokenScope
from accounts.services import token_create
from loops_project.api import api as ninja_api
from runs.models import Run
from tests.factories import LoopFactory, RunFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)


def client_for(live_server, secret):
    return httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
    )


def assert_error(response, status, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Basic dXNlcjpwdw==", "Bearer lp_not-a-real-token", "Token abc"],
)
def test_missing_malformed_or_unknown_token_is_401(anon_api, loop, header):
    headers = {"Authorization": header} if header is not None else {}
    for method, path in (("GET", "/api/v1/runs"), ("POST", "/api/loop/acme/greeting")):
        response = anon_api.request(method, path, headers=headers, json={})
        assert_error(response, 401, "unauthorized")
    assert not Run.objects.exists()


def test_revoked_and_expired_tokens_are_401(live_server, org, loop):
    revoked, revoked_secret = token_create(organization=org, name="old")
    revoked.revoke()
    _, expired_secret = token_create(
        organization=org, name="past", expires_at=timezone.now() - timedelta(minutes=1)
    )
    for secret in (revoked_secret, expired_secret):
        with client_for(live_server, secret) as client:
            assert_error(client.get("/api/v1/runs"), 401, "unauthorized")
            assert_error(client.post("/api/loop/acme/greeting", json={}), 401)
    assert not Run.objects.exists()


def test_trigger_token_may_trigger_and_read_runs_only(live_server, org, loop):
    run = RunFactory(loop=loop)
    with client_for(live_server, make_token(org, scope=TokenScope.TRIGGER)) as client:
        assert client.post("/api/loop/acme/greeting", json={"name": "A"}).status_code == 202
        assert client.post("/api/v1/loops/greeting/runs", json={"input": {}}).status_code == 202
        assert client.get("/api/v1/runs").status_code == 200
        assert client.get(f"/api/v1/runs/{run.pk}").status_code == 200
        assert client.get(f"/api/v1/runs/{run.pk}/logs").status_code == 200
        assert client.get("/api/v1/loops/greeting/runs").status_code == 200
        forbidden = [
            ("GET", "/api/v1/loops", None),
            ("POST", "/api/v1/loops", {"slug": "new", "name": "New"}),
            ("GET", "/api/v1/loops/greeting", None),
            ("PATCH", "/api/v1/loops/greeting", {"paused": True}),
            ("POST", "/api/v1/loops/greeting/versions", {"code": "x"}),
            ("GET", "/api/v1/loops/greeting/versions", None),
            ("GET", "/api/v1/loops/greeting/versions/1", None),
            ("POST", "/api/v1/loops/greeting/rollback", {"version": 1}),
            ("GET", "/api/v1/loops/greeting/schedules", None),
            ("POST", f"/api/v1/runs/{run.pk}/cancel", None),
            ("POST", f"/api/v1/runs/{run.pk}/restart", None),
            ("POST", f"/api/v1/runs/{run.pk}/resume", None),
            ("POST", f"/api/v1/runs/{run.pk}/respond", {"action": "approve"}),
            ("POST", f"/api/v1/runs/{run.pk}/events", {"type": "go"}),
            ("GET", "/api/v1/webhooks", None),
            ("POST", "/api/v1/webhooks", {"url": "https://example.com/hook"}),
            ("DELETE", "/api/v1/webhooks/hook_x", None),
        ]
        for method, path, body in forbidden:
            response = client.request(method, path, json=body)
            assert_error(response, 403, "forbidden")
    loop.refresh_from_db()
    assert loop.paused is False
    assert Run.objects.count() == 3  # the run made here and the two triggers


def test_rate_limit_answers_429_with_retry_after_per_token(api, live_server, org, settings):
    # An hour's window: four requests of a minute's window straddled its end about once in a
    # hundred runs (the budget starts again there) and the fourth was let through.
    settings.LOOPS_API_RATE = "3/h"
    for _ in range(3):
        assert api.get("/api/v1/runs").status_code == 200
    response = api.get("/api/v1/runs")
    assert_error(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 3600
    # another token of the same organization has its own budget
    with client_for(live_server, make_token(org, name="second")) as other:
        assert other.get("/api/v1/runs").status_code == 200
    settings.LOOPS_API_RATE = "1000/h"
    assert api.get("/api/v1/runs").status_code == 200


def test_a_30_mib_body_is_413(api, loop):
    body = b'{"input": "' + b"x" * (30 * 1024 * 1024) + b'"}'
    for path in ("/api/v1/loops/greeting/runs", "/api/loop/acme/greeting"):
        response = api.post(path, content=body, headers={"Content-Type": "application/json"})
        error = assert_error(response, 413, "too_large")
        assert "bytes" in error["message"]
    assert not Run.objects.exists()


def test_an_input_over_the_input_limit_is_413(api, loop, settings):
    settings.LOOPS_MAX_INPUT_BYTES = 1000
    response = api.post("/api/v1/loops/greeting/runs", json={"input": "y" * 2000})
    assert_error(response, 413, "input_too_large")
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/loops/greeting/runs", b'{"input": ', "body"),
        ("/api/loop/acme/greeting", b"{not json", "body"),
        ("/api/v1/loops", b"[1, 2", "body"),
        ("/api/v1/loops/greeting/runs", b'{"input": NaN}', "input"),
        ("/api/loop/acme/greeting", b'{"a": Infinity}', "body.a"),
    ],
)
def test_malformed_json_is_400_naming_the_field(api, loop, path, body, field):
    response = api.post(path, content=body, headers={"Content-Type": "application/json"})
    error = assert_error(response, 400, "invalid_json")
    assert error["details"] == [{"field": field, "message": error["message"]}]
    assert "JSON" in error["message"]
    assert not Run.objects.exists()


def test_a_nul_character_is_refused_not_a_server_error(api, loop):
    response = api.post("/api/v1/loops/greeting/runs", json={"input": {"a": "b\x00c"}})
    error = assert_error(response, 422, "invalid_value")
    assert [e["field"] for e in error["details"]] == ["input.a"]
    assert_error(api.get("/api/v1/runs/run_%00x"), 400, "bad_request")
    assert_error(api.get("/api/v1/runs", params={"loop": "a\x00"}), 400, "bad_request")
    assert not Run.objects.exists()


def test_a_body_of_the_wrong_shape_is_422_naming_the_field(api, loop):
    response = api.post("/api/v1/loops", json={"name": "No slug"})
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["field"] == "slug"
    response = api.post("/api/v1/loops/greeting/runs", json={"inputs": []})
    error = assert_error(response, 422)
    assert "inputs" in error["message"]
    response = api.patch("/api/v1/loops/greeting", json={"paused": "sometimes"})
    assert assert_error(response, 422)["details"][0]["field"] == "paused"


def test_openapi_documents_every_endpoint_with_its_errors(anon_api):
    response = anon_api.get("/api/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    expected = {
        ("post", "/api/loop/{org}/{loop}"),
        ("get", "/api/v1/runs"),
        ("get", "/api/v1/runs/{run_id}"),
        ("get", "/api/v1/runs/{run_id}/logs"),
        ("get", "/api/v1/runs/{run_id}/steps/{step_id}/output"),
        ("post", "/api/v1/runs/{run_id}/respond"),
        ("post", "/api/v1/runs/{run_id}/events"),
        ("post", "/api/v1/runs/{run_id}/resume"),
        ("post", "/api/v1/runs/{run_id}/restart"),
        ("post", "/api/v1/runs/{run_id}/cancel"),
        ("get", "/api/v1/batches/{batch_id}"),
        ("get", "/api/v1/scans/{scan_id}"),
        ("post", "/api/v1/scans/{scan_id}/result"),
        ("get", "/api/v1/loops"),
        ("post", "/api/v1/loops"),
        ("get", "/api/v1/loops/{loop}"),
        ("patch", "/api/v1/loops/{loop}"),
        ("get", "/api/v1/loops/{loop}/runs"),
        ("post", "/api/v1/loops/{loop}/runs"),
        ("get", "/api/v1/loops/{loop}/versions"),
        ("post", "/api/v1/loops/{loop}/versions"),
        ("get", "/api/v1/loops/{loop}/versions/{number}"),
        ("post", "/api/v1/loops/{loop}/rollback"),
        ("get", "/api/v1/loops/{loop}/schedules"),
        ("post", "/api/v1/loops/{loop}/schedules"),
        ("patch", "/api/v1/schedules/{schedule_id}"),
        ("delete", "/api/v1/schedules/{schedule_id}"),
        ("get", "/api/v1/webhooks"),
        ("post", "/api/v1/webhooks"),
        ("delete", "/api/v1/webhooks/{hook_id}"),
    }
    documented = {(m, p) for p, ops in paths.items() for m in ops}
    assert expected <= documented
    for method, path in expected:
        responses = paths[path][method]["responses"]
        assert {"401", "404", "422", "429"} <= set(responses), (method, path)
    assert "bearer" in str(schema["components"]["securitySchemes"]).lower()
    docs = anon_api.get("/api/docs")
    assert docs.status_code == 200
    assert "openapi.json" in docs.text


def test_the_openapi_schema_is_built_once_per_process(anon_api, monkeypatch):
    """Building it costs a large fraction of a second and /api/openapi.json needs no token."""
    import ninja.main

    builds = []
    real = ninja.main.get_schema
    monkeypatch.setattr(ninja.main, "get_schema", lambda **kw: builds.append(1) or real(**kw))
    monkeypatch.setattr(ninja_api, "_openapi_schemas", {}, raising=False)

    first = anon_api.get("/api/openapi.json")
    second = anon_api.get("/api/openapi.json")

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["paths"]
    assert len(builds) == 1


def test_another_orgs_token_cannot_trigger_this_orgs_loop(live_server, loop, other_org):
    LoopFactory(organization=other_org, slug="greeting")
    with client_for(live_server, make_token(other_org)) as client:
        response = client.post(f"/api/loop/acme/{loop.slug}", json={})
        assert_error(response, 404, "not_found")
        response = client.post(f"/api/loop/{loop.organization_id}/{loop.pk}", json={})
        assert_error(response, 404, "not_found")
        assert_error(client.post(f"/api/v1/loops/{loop.pk}/runs", json={"input": 1}), 404)
    assert not Run.objects.filter(loop=loop).exists()


def test_unknown_paths_and_methods_answer_in_the_error_shape(api):
    response = api.get("/api/v1/nothing-here")
    assert_error(response, 404, "not_found")
    response = api.put("/api/v1/runs", json={})
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]
