"""Property-based: whatever JSON-like text arrives, no endpoint that takes JSON answers a 5xx.

Documents are generated with one value Loops cannot store (a non-finite or overflowing number,
a lone surrogate, a NUL character, nesting past LOOPS_MAX_JSON_DEPTH) somewhere inside
ordinary JSON, and sent over real HTTP to every endpoint that takes JSON, where the value
lands. Each answer must be a 400 or 422 in the API's error shape, and nothing may be saved.
Ordinary JSON sent as a trigger's body must come back whole."""

import json

import pytest
from django.conf import settings as django_settings
from django_q.models import OrmQ
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loops.models import Loop, LoopVersion, Schedule
from loops.schedules import schedule_create
from runs.models import Run, RunEvent, ScanRequest, ScanStatus, Step, StepStatus
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

FAST = settings(
    max_examples=20,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# --- Documents -----------------------------------------------------------------------------------

keys = st.text(max_size=8)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32),
    st.text(max_size=12),
)
ordinary = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
poison = st.one_of(
    # Not JSON: Python's json reads them, no other parser does.
    st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    # JSON numbers beyond a float: they overflow to infinity.
    st.builds(
        lambda sign, mantissa, exponent: f"{sign}{mantissa}e{exponent}",
        st.sampled_from(["", "-"]),
        st.sampled_from(["1", "9.99", "1.7976931348623159"]),
        st.integers(min_value=309, max_value=100_000),
    ),
    st.integers(min_value=310, max_value=1000).map(lambda digits: "9" * digits + ".0"),
    # Lone surrogates and NUL characters, as escapes, in values and in keys.
    st.builds(lambda s, c: json.dumps(s + c), st.text(max_size=5), lone_surrogates),
    st.builds(lambda s, c: json.dumps({s + c: 1}), st.text(max_size=5), lone_surrogates),
    st.builds(lambda s: json.dumps(s + "\x00" + s), st.text(max_size=5)),
    # Deep: past the limit, up to far past the parser's stack.
    st.integers(min_value=101, max_value=100_000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=101, max_value=3000).map(lambda n: '{"a":' * n + "0" + "}" * n),
)


def _array(before: list, inner: str, after: list) -> str:
    return "[" + ", ".join([*map(json.dumps, before), inner, *map(json.dumps, after)]) + "]"


def _object(key: str, inner: str, others: dict) -> str:
    members = [f"{json.dumps(key)}: {inner}"]
    members += [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in others.items() if k != key]
    return "{" + ", ".join(members) + "}"


members = st.lists(ordinary, max_size=3)


def with_one(bad: st.SearchStrategy) -> st.SearchStrategy:
    """JSON text with `bad` (text) somewhere inside ordinary JSON."""
    return st.recursive(
        bad,
        lambda inner: st.one_of(
            st.builds(
                _array, st.lists(ordinary, max_size=3), inner, st.lists(ordinary, max_size=3)
            ),
            st.builds(_object, keys, inner, st.dictionaries(keys, ordinary, max_size=3)),
        ),
        max_leaves=4,
    )


# --- Endpoints -----------------------------------------------------------------------------------


@pytest.fixture
def world(loop):
    """A run waiting for an answer, one waiting for a scan, a schedule: every JSON endpoint
    has something to land on."""
    asking = RunFactory(loop=loop, status="waiting", pending={"kind": "input", "stepName": "Ask"})
    Step.objects.create(run=asking, order=0, key="Ask", name="Ask", kind="input", status="waiting")
    scanning = RunFactory(loop=loop, status="waiting", pending={"kind": "scan", "stepName": "S"})
    step = Step.objects.create(
        run=scanning, order=0, key="S", name="S", kind="scan", status="waiting"
    )
    scan = ScanRequest.objects.create(organization=loop.organization, run=scanning, step=step)
    schedule = schedule_create(loop=loop, cron="0 * * * *", input={"n": 1})
    # Off, so that the session's worker cluster never fires it mid-test (an hour can turn).
    Schedule.objects.filter(pk=schedule.pk).update(enabled=False)
    run = asking.pk
    return [
        ("POST", "/api/loop/acme/greeting", "DOC"),
        ("POST", "/api/loop/acme/greeting?mode=async", "DOC"),
        ("POST", "/api/v1/loops/greeting/runs", '{"input": DOC}'),
        ("POST", "/api/v1/loops/greeting/runs", '{"inputs": [1, DOC]}'),
        ("POST", f"/api/v1/runs/{run}/events", '{"type": "go", "payload": DOC}'),
        ("POST", f"/api/v1/runs/{run}/respond", '{"action": "input", "input": DOC}'),
        ("POST", f"/api/v1/scans/{scan.pk}/result", '{"heartRate": 60, "more": DOC}'),
        ("POST", "/api/v1/loops/greeting/schedules", '{"cron": "0 * * * *", "input": DOC}'),
        ("PATCH", f"/api/v1/schedules/{schedule.pk}", '{"input": DOC}'),
        ("POST", "/api/v1/loops", '{"slug": "other", "description": DOC}'),
        ("PATCH", "/api/v1/loops/greeting", '{"description": DOC, "paused": true}'),
        ("POST", "/api/v1/loops/greeting/versions", '{"code": DOC}'),
        ("POST", "/api/v1/loops/greeting/rollback", '{"version": DOC}'),
    ]  # fmt: skip


def state() -> tuple:
    counts = tuple(
        model.objects.count()
        for model in (Run, RunEvent, Loop, LoopVersion, Schedule, OrmQ, ScanRequest)
    )
    return (
        counts,
        Step.objects.filter(status=StepStatus.WAITING).count(),
        ScanRequest.objects.filter(status=ScanStatus.PENDING).count(),
        list(Schedule.objects.values_list("input", flat=True)),
        list(Loop.objects.values_list("description", "paused")),
    )


def assert_refused(response, where: str) -> None:
    assert response.status_code in (400, 422), f"{where}: {response.status_code} {response.text}"
    body = response.json()
    assert set(body) == {"error"}, where
    error = body["error"]
    assert error["code"] in ("invalid_json", "invalid_value"), where
    assert isinstance(error["message"], str), where
    assert error["message"], where
    assert [type(e["field"]) for e in error["details"]] == [str], where


def test_json_that_cannot_be_stored_is_refused_by_every_endpoint(api, world):
    before = state()

    @FAST
    @given(document=with_one(poison))
    def check(document: str):
        for method, path, template in world:
            body = template.replace("DOC", document).encode()
            response = api.request(
                method, path, content=body, headers={"Content-Type": "application/json"}
            )
            assert_refused(response, f"{method} {path}")
        assert state() == before

    check()


def test_bytes_that_are_not_utf8_are_refused_by_every_endpoint(api, world):
    before = state()

    @FAST
    @given(
        document=with_one(
            st.sampled_from([b"\xed\xa0\x80", b"\xff", b"\xc0\xaf", b"\xf4\x90\x80\x80"]).map(
                lambda raw: '"' + raw.decode("latin-1") + '"'
            )
        )
    )
    def check(document: str):
        for method, path, template in world:
            body = template.replace("DOC", document).encode("latin-1", "surrogateescape")
            response = api.request(
                method, path, content=body, headers={"Content-Type": "application/json"}
            )
            assert_refused(response, f"{method} {path}")
            assert response.json()["error"]["code"] == "invalid_json"
        assert state() == before

    check()


def as_floats(value):
    """Numbers as floats: PostgreSQL's jsonb gives 1.801440065696563e16 back as the integer
    18014400656965630, the same float."""
    return json.loads(json.dumps(value), parse_int=float)


def test_ordinary_json_is_taken_whole_by_the_trigger_url(api, loop):
    @FAST
    @given(value=ordinary)
    def check(value):
        response = api.post("/api/loop/acme/greeting", content=json.dumps(value).encode())
        assert response.status_code == 202, response.text
        run = Run.objects.get(pk=response.json()["runId"])
        assert as_floats(run.input) == as_floats(value)

    check()


def test_ordinary_json_nested_up_to_the_limit_is_accepted(api, loop):
    limit = django_settings.LOOPS_MAX_JSON_DEPTH

    @FAST
    @given(depth=st.integers(min_value=1, max_value=limit), value=scalars)
    def check(depth, value):
        document = value
        for _ in range(depth - 1):
            document = [document]
        response = api.post("/api/v1/loops/greeting/runs", json={"input": document})
        expected = 202 if depth < limit else 422  # {"input": …} is one level more
        assert response.status_code == expected, response.text

    check()
