"""The run page's view of steps and values: formatted values, summaries, pages, iterations,
items, large values (load all, download, raw pages) and Save Output to Library."""

import json
import re

import pytest
from django.urls import reverse

from accounts.models import Role
from loops.models import TestInput
from runs.models import Step
from tests.factories import MembershipFactory, RunFactory

pytestmark = pytest.mark.django_db


def _step(run, order, name, **fields):
    fields.setdefault("status", "succeeded")
    return Step.objects.create(run=run, order=order, key=f"{name}#1", name=name, **fields)


def _value(client, run, **params):
    return client.get(reverse("runs:value", args=[run.pk]), params)


def test_formatted_view_reads_as_tables_and_text(owner_client, loop):
    run = RunFactory(loop=loop, output={
        "customer": {"name": "Ana <b>", "vip": True, "credit": None},
        "orders": [{"id": 1, "total": 9.5}, {"id": 2, "note": "gift"}],
        "trace": "Traceback (most recent call last):\n  File x\nValueError: no",
    })  # fmt: skip
    page = owner_client.get(run.get_absolute_url()).content.decode()
    output = page.split('id="run-output"')[1].split("</section>")[0]
    assert '<table class="fv-kv"><tr><th>' in output  # (PostgreSQL orders an object's keys)
    assert '<tr><th>customer</th><td><table class="fv-kv">' in output
    assert '<th>name</th><td><span class="fv-str">Ana &lt;b&gt;</span></td>' in output  # escaped
    assert '<span class="fv-bool">true</span>' in output
    assert '<span class="fv-null">null</span>' in output
    # An array of objects is one table: a column per key, a row per item.
    assert "<thead><tr><th></th><th>id</th><th>total</th><th>note</th></tr></thead>" in output
    trace = "Traceback (most recent call last):\n  File x\nValueError: no"
    assert f'<pre class="fv-text">{trace}</pre>' in output
    raw = output.split('<pre class="value raw">')[1].split("</pre>")[0]  # Raw beside it
    assert "&quot;customer&quot;:{&quot;" in raw


def test_a_step_with_one_section_opens_it(owner_client, loop):
    run = RunFactory(loop=loop)
    _step(run, 1, "Only output", output={"a": 1})
    _step(run, 2, "Input and output", kind="http", input={"method": "GET", "url": "https://x"},
          output={"status": 200, "headers": {}, "body": "ok"})  # fmt: skip
    page = owner_client.get(run.get_absolute_url()).content.decode()
    one = page.split('data-step="Only output"')[1].split('data-step="Input and output"')[0]
    two = page.split('data-step="Input and output"')[1]
    assert '<details class="section" open><summary>Output</summary>' in one
    assert '<details class="section"><summary>Input</summary>' in two
    assert '<details class="section"><summary>Output</summary>' in two


def test_http_summary_rows_have_copy_buttons_and_pages_show_one_entry_each(owner_client, loop):
    run = RunFactory(loop=loop)
    pages = [{"status": 200, "headers": {}, "body": [n], "text": "", "url": f"https://api/p{n}",
              "page": n} for n in (1, 2, 3)]  # fmt: skip
    _step(
        run,
        1,
        "List",
        kind="http",
        page=3,
        output=pages,
        input={"method": "GET", "url": "https://api.example.com/items?x=1", "pages": 3},
    )
    page = owner_client.get(run.get_absolute_url()).content.decode()
    assert 'data-copy-text="GET"' in page
    assert 'data-copy-text="https://api.example.com/items?x=1"' in page
    assert 'data-copy-text="200"' in page
    for n in (1, 2, 3):
        assert f"<summary>Output · page {n}</summary>" in page
    assert "3 pages" in page
    second = _value(owner_client, run, field="page-2", step=run.steps.get().pk, full=1)
    assert json.loads(second.content)["url"] == "https://api/p2"


def test_iterations_are_numbered_from_one_and_each_lists_its_items(owner_client, loop):
    run = RunFactory(loop=loop)
    each = _step(run, 1, "Each order", kind="each", output={"count": 2})
    for index, item in enumerate(["apple", "pear"]):
        Step.objects.create(run=run, order=2 + index, key=f"Pack#{index + 1}", name="Pack",
                            parent=each, iteration=index, iteration_item=item,
                            status="succeeded")  # fmt: skip
    page = owner_client.get(run.get_absolute_url()).content.decode()
    assert "iteration 1" in page
    assert "iteration 2" in page
    assert "iteration 0" not in page
    assert page.count('class="tl-divider"') == 1  # between the two iterations
    assert "<summary>Items</summary>" in page
    items = _value(owner_client, run, field="items", step=each.pk, full=1, view="raw")
    assert json.loads(items.content) == ["apple", "pear"]


def test_load_all_download_and_raw_pages_of_a_long_array(owner_client, loop):
    run = RunFactory(loop=loop, output=[{"n": n} for n in range(500)], input="x" * 50_000)
    page = owner_client.get(run.get_absolute_url()).content.decode()
    output = page.split('id="run-output"')[1].split("</section>")[0]
    raw_pane = output.split('data-view-pane="raw"')[1]
    assert raw_pane.count('<li><span class="idx">') == 20  # Raw pages too
    assert "view=raw-items&start=20" in raw_pane
    assert "Show all" in raw_pane
    rest = _value(owner_client, run, field="output", view="raw-items", start=20, all=1)
    body = rest.content.decode()
    assert body.count('<span class="idx">') == 480
    assert "Show 20 more" not in body
    assert "{&quot;n&quot;:499}" in body

    first = _value(owner_client, run, field="input", view="raw", start=20_000).content.decode()
    assert "Load more" in first
    assert "Load all" in first
    whole = _value(owner_client, run, field="input", view="raw", start=20_000, all=1)
    assert whole.content.decode().count("x") == 30_001  # all the rest at once
    assert "Load more" not in whole.content.decode()

    download = _value(owner_client, run, field="output", view="raw", full=1, download=1)
    assert download["Content-Disposition"] == f'attachment; filename="{run.pk}-run-output.json"'
    assert len(json.loads(download.content)) == 500


def test_save_output_to_library_places_the_whole_output_at_the_path(owner_client, loop):
    run = RunFactory(loop=loop)
    step = _step(run, 1, "Fetch", output={"id": 7, "blob": "y" * 30_000})
    page = owner_client.get(run.get_absolute_url()).content.decode()
    assert 'value="step.Fetch.output"' in page
    assert "data-needs-full hidden" in page  # shown once the whole output has loaded
    url = reverse("runs:save_output", args=[run.pk, step.pk])
    response = owner_client.post(url, {"name": "Fetched", "path": "step.Fetch.output"}, follow=True)
    assert "Saved the output of “Fetch” as test input “Fetched”." in response.content.decode()
    saved = TestInput.objects.get(loop=loop)
    assert saved.input == {"step": {"Fetch": {"output": {"id": 7, "blob": "y" * 30_000}}}}
    owner_client.post(url, {"name": "Bare", "path": ""})
    assert TestInput.objects.get(name="Bare").input == {"id": 7, "blob": "y" * 30_000}
    bad = owner_client.post(url, {"name": "Bad", "path": "step..output"}, follow=True)
    assert "path must be names separated by dots" in bad.content.decode()
    nameless = owner_client.post(url, {"name": " ", "path": "x"}, follow=True)
    assert "Give the test input a name" in nameless.content.decode()
    assert TestInput.objects.count() == 2


def test_save_output_is_for_editors_of_the_runs_organization(client, org, loop, outsider):
    run = RunFactory(loop=loop)
    step = _step(run, 1, "Fetch", output={"id": 7})
    url = reverse("runs:save_output", args=[run.pk, step.pk])
    client.force_login(MembershipFactory(organization=org, role=Role.VIEWER).user)
    assert client.post(url, {"name": "x", "path": ""}).status_code == 403
    client.force_login(outsider)
    assert client.post(url, {"name": "x", "path": ""}).status_code == 404
    assert not TestInput.objects.exists()


def test_load_all_is_bounded_per_request(owner_client, loop):
    """A viewer's "Show all" on a 50,000-item value costs one bounded page, not seconds
    (a review finding): the rest stays one more click away."""
    run = RunFactory(loop=loop, output=[{"n": n} for n in range(5000)], input="z" * 2_500_000)
    items = _value(owner_client, run, field="output", view="items", start=20, all=1)
    body = items.content.decode()
    assert body.count('<span class="idx">') == 1000
    assert "Show 20 more (3980 left)" in body
    text = _value(owner_client, run, field="input", view="raw", start=20_000, all=1)
    chunk = re.search(r'<pre class="value chunk">(z*)</pre>', text.content.decode())
    assert len(chunk.group(1)) == 2_000_000  # not counting the z's a run id may hold
    assert "Load all" in text.content.decode()  # more than one request's worth is left


def test_runs_and_audit_filters_refuse_dates_past_the_calendar(owner_client, api):
    for params in ({"createdAfter": "9999-12-31T23:00:00-05:00"},
                   {"createdBefore": "0001-01-01T00:30:00+05:00"}):  # fmt: skip
        response = api.get("/api/v1/runs", params=params)
        assert response.status_code == 422, response.text
        assert "out of range" in response.json()["error"]["message"]
    bulk = api.post("/api/v1/runs/bulk", json={
        "action": "cancel", "filter": {"createdAfter": "9999-12-31T23:00:00-05:00"},
        "dryRun": True,
    })  # fmt: skip
    assert bulk.status_code == 422, bulk.text
    audit = api.get("/api/v1/audit", params={"after": "9999-12-31T23:00:00-05:00"})
    assert audit.status_code == 422, audit.text
    page = owner_client.get(reverse("accounts:audit"), {"before": "0001-01-01T00:30:00+05:00"})
    assert page.status_code == 200
    assert "out of range" in page.content.decode()
