"""A JSON value as a person reads it (the "Formatted" view of a value box): objects as
key/value tables, arrays of objects as tables, multi-line strings (tracebacks, bodies) as text.
The HTML is built from escaped parts only; anything too big or too deep is left to the JSON
views beside it."""

import ast
import json

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

MAX_DEPTH = 6
MAX_COLUMNS = 12  # an array of objects with more keys than this is shown item by item


def formatted_html(value, depth: int = 0) -> SafeString:
    if depth > MAX_DEPTH:
        return format_html('<code class="fv-json">{}</code>', json.dumps(value, default=str))
    if isinstance(value, dict):
        return _object(value, depth)
    if isinstance(value, list):
        return _array(value, depth)
    return _scalar(value)


def _scalar(value) -> SafeString:
    if value is None:
        return mark_safe('<span class="fv-null">null</span>')
    if isinstance(value, bool):
        return format_html('<span class="fv-bool">{}</span>', "true" if value else "false")
    if isinstance(value, int | float):
        return format_html('<span class="fv-num">{}</span>', json.dumps(value))
    text = str(value)
    if "\n" in text:
        return format_html('<pre class="fv-text">{}</pre>', text)
    if text == "":
        return mark_safe('<span class="fv-null">empty text</span>')
    return format_html('<span class="fv-str">{}</span>', text)


def _object(value: dict, depth: int) -> SafeString:
    if not value:
        return mark_safe('<span class="fv-null">empty object</span>')
    rows = format_html_join(
        "", "<tr><th>{}</th><td>{}</td></tr>",
        ((key, formatted_html(item, depth + 1)) for key, item in value.items()),
    )  # fmt: skip
    return format_html('<table class="fv-kv">{}</table>', rows)


def _array(value: list, depth: int) -> SafeString:
    if not value:
        return mark_safe('<span class="fv-null">empty list</span>')
    columns = _columns(value)
    if columns:
        head = format_html_join("", "<th>{}</th>", ((c,) for c in columns))
        body = format_html_join(
            "", "<tr><td class=\"fv-idx\">{}</td>{}</tr>",
            ((index, _cells(item, columns, depth)) for index, item in enumerate(value)),
        )  # fmt: skip
        return format_html(
            '<div class="fv-scroll"><table class="fv-grid"><thead><tr><th></th>{}</tr></thead>'
            "<tbody>{}</tbody></table></div>",
            head, body,
        )  # fmt: skip
    items = format_html_join(
        "", "<li>{}</li>", ((formatted_html(item, depth + 1),) for item in value)
    )
    return format_html('<ol class="fv-list" start="0">{}</ol>', items)


def _columns(value: list) -> list[str] | None:
    """The keys of an array of objects, in first-seen order, if it reads well as a table."""
    if not all(isinstance(item, dict) for item in value):
        return None
    columns: dict[str, None] = {}
    for item in value:
        columns.update(dict.fromkeys(item))
        if len(columns) > MAX_COLUMNS:
            return None
    return list(columns) or None


def _cells(item: dict, columns: list[str], depth: int) -> SafeString:
    return format_html_join(
        "", "<td>{}</td>",
        ((formatted_html(item[c], depth + 1) if c in item else mark_safe(""),) for c in columns),
    )  # fmt: skip


def summary_rows(step, child_runs) -> list[tuple[str, str]]:
    """The facts of a step worth copying, as (label, text) rows: an HTTP call's method, URL and
    status code, a child run's id, a wait's kind."""
    rows = []
    if step.kind == "http" and isinstance(step.input, dict):
        rows += [
            ("Method", str(step.input.get("method", ""))),
            ("URL", str(step.input.get("url", ""))),
        ]
        status = _http_status(step)
        if status is not None:
            rows.append(("Status code", str(status)))
    if step.kind in {"sleep", "event", "scan", "input", "approval"}:
        rows.append(("Waits for", WAIT_WORDS[step.kind]))
    for child in child_runs:
        rows.append(("Child run", child["run"].pk))
    return rows


WAIT_WORDS = {
    "sleep": "a timer (sleep)",
    "event": "an event",
    "scan": "a facial scan result",
    "input": "a person's answer",
    "approval": "a person's approval",
}


def _http_status(step):
    output = step.output
    if isinstance(output, list) and output:
        output = output[-1]
    if isinstance(output, dict) and "status" in output:
        return output["status"]
    if isinstance(step.error, dict) and "status" in step.error:
        return step.error["status"]
    return None


STEP_METHODS = frozenset({
    "do", "sleep", "sleep_until", "wait_for_event", "wait_for_scan", "ask", "approve", "http",
    "run_loop", "each",
})  # fmt: skip


def steps_after(code: str, line: int, limit: int = 20) -> list[str]:
    """The names of the steps a program calls (step.<method>("name", …) with a literal name)
    below `line`, in the order they are written: what a run stopped at that line skipped."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    calls = [
        (node.lineno, node.col_offset, node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and node.lineno > line
        and isinstance(node.func, ast.Attribute) and node.func.attr in STEP_METHODS
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "step"
        and node.args and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]  # fmt: skip
    return list(dict.fromkeys(name for *_, name in sorted(calls)))[:limit]
