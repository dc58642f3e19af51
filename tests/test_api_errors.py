"""The API's one error shape: `details`, whenever an error has them, is a list of field errors."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)

BROKEN_CODE = "class HealthLoop(Loop):\n    def run(self, event, step):\n        return (\n"
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "request_kwargs", "status", "code", "field"),
    [
        ("POST", "/api/v1/loops", {"content": b"[1, 2", "headers": JSON},
         400, "invalid_json", "body"),
        ("POST", "/api/loop/acme/greeting", {"content": b"{not json", "headers": JSON},
         400, "invalid_json", "body"),
        ("POST", "/api/v1/loops/greeting/runs", {"content": b'{"input": NaN}', "headers": JSON},
         400, "invalid_json", "input"),
        ("POST", "/api/v1/loops/greeting/runs", {"json": {"input": {"a": "b\x00c"}}},
         422, "invalid_value", "input.a"),
        ("POST", "/api/v1/loops", {"json": {"name": "No slug"}},
         422, "validation_error", "slug"),
        ("PATCH", "/api/v1/loops/greeting", {"json": {"paused": "sometimes"}},
         422, "validation_error", "paused"),
        ("POST", "/api/v1/loops", {"json": {"slug": "Not A Slug"}}, 422, "invalid_slug", "slug"),
        ("POST", "/api/v1/webhooks", {"json": {"url": "ftp://example.com/x"}},
         422, "invalid_url", "url"),
        ("GET", "/api/v1/runs", {"params": {"status": "exploded"}},
         422, "invalid_filter", "status"),
    ],
    ids=[
        "unparsable body", "unparsable trigger body", "NaN", "NUL", "missing member",
        "member of the wrong type", "bad slug", "bad webhook URL", "unknown status filter",
    ],
)  # fmt: skip
def test_every_error_with_details_lists_field_errors(
    api, loop, method, path, request_kwargs, status, code, field
):
    response = api.request(method, path, **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["details"], list)
    assert [e["field"] for e in error["details"]] == [field]
    for detail in error["details"]:
        assert set(detail) == {"field", "message"}
        assert isinstance(detail["message"], str)
        assert detail["message"]


def test_a_program_error_is_a_field_error_on_code_with_its_line(api, loop):
    response = api.post("/api/v1/loops/greeting/versions", json={"code": BROKEN_CODE})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_code"
    [detail] = error["details"]
    assert set(detail) == {"field", "message", "line"}
    assert detail["field"] == "code"
    assert error["message"] == f"Line {detail['line']}: {detail['message']}"


def test_an_error_about_no_field_has_no_details(api, loop):
    response = api.post("/api/v1/loops", json={"slug": "greeting"})
    assert response.status_code == 409
    assert "details" not in response.json()["error"]
    response = api.get("/api/v1/runs/run_nope")
    assert response.status_code == 404
    assert "details" not in response.json()["error"]


def test_the_openapi_document_declares_details_as_a_list_of_field_errors(anon_api):
    schemas = anon_api.get("/api/openapi.json").json()["components"]["schemas"]
    details = schemas["ErrorBody"]["properties"]["details"]
    assert {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}} in details[
        "anyOf"
    ]
    assert set(schemas["FieldError"]["required"]) == {"field", "message"}
    assert set(schemas["FieldError"]["properties"]) == {"field", "message", "line"}
