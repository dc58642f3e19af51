"""JSON that Loops can store and serve: one parser for JSON that comes in (API bodies, page
forms, commands) and one check for values about to be stored.

Python's json module accepts more than the databases and other clients do, and every one of
these used to end in a 500:

- NaN and Infinity literals (not JSON, RFC 8259), and numbers such as 1e400 that overflow a
  float to infinity: PostgreSQL's jsonb refuses them, and no other client can read them back;
- lone UTF-16 surrogates ("\\ud800"): not Unicode, so neither PostgreSQL nor a UTF-8 encoder
  takes them;
- NUL characters ("\\u0000"): jsonb and text columns cannot hold them;
- deep nesting: 100,000 "[" exhaust the parser's stack (RecursionError); a few thousand pass
  the parser but not SQLite's JSON functions (2,000 levels), PostgreSQL's stack limit or
  Python's own recursion when the value is shown formatted.

Each problem is reported with where it is in the value (`input.items[3].price`).
"""

import json
import math
import re

from django.conf import settings

from loops_project.errors import Invalid

# A JSON string, escapes included (unrolled so that it never backtracks).
STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
NOT_BRACKET = re.compile(r"[^\[\]{}]+")
BRACKETS = str.maketrans({"[": "(", "{": "(", "]": ")", "}": ")"})
# Escapes that may decode to a NUL character or to half of a surrogate pair.
SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
SURROGATE = re.compile("[\ud800-\udfff]")


class JsonValueError(Invalid, ValueError):
    """JSON that Loops refuses, naming where the problem is (`field`): 400 `invalid_json` for
    text that is not JSON, 422 `invalid_value` for JSON holding a value Loops cannot store."""

    def __init__(self, reason: str, *, field: str, status: int = 422):
        self.status = status
        self.field = field
        self.reason = reason
        super().__init__(
            f"{field} {reason}",
            code="invalid_json" if status == 400 else "invalid_value",
            details={"field": field},
        )


def max_depth() -> int:
    return settings.LOOPS_MAX_JSON_DEPTH


def parse(raw: bytes | str, *, field: str = ""):
    """Parse JSON text, refusing what Loops cannot store (see the module's docstring).

    `field` names the value in errors; "" is a request body: the body itself is "body" and
    its members are named from the top (`input.name`), as the API names fields elsewhere."""
    root = field or "body"
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode(json.detect_encoding(raw))
        except UnicodeDecodeError as exc:
            raise JsonValueError(
                f"is not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})",
                field=root,
                status=400,
            ) from None
        suspect = False  # strict decoding refuses surrogates
    else:
        text = raw
        suspect = SURROGATE.search(text) is not None
    if _too_deep(text):
        raise JsonValueError(f"is nested more than {max_depth()} levels deep", field=root)
    odd: list[str] = []
    try:
        value = json.loads(text, parse_constant=_constant_of(odd), parse_float=_float_of(odd))
    except json.JSONDecodeError as exc:
        raise JsonValueError(f"is not valid JSON: {exc}", field=root, status=400) from None
    except RecursionError:  # deeper than counted: text that is not JSON after all
        raise JsonValueError("is nested too deeply", field=root) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise JsonValueError(f"is not a number Loops can store: {exc}", field=root) from None
    if odd or suspect or SUSPECT_ESCAPE.search(text):
        _refuse(value, field)
    return value


def dumps(value, *, field: str) -> str:
    """The value's JSON text (compact as json.dumps makes it, non-ASCII kept), once it is
    known to be storable: finite numbers, no NUL or lone surrogate, not nested too deeply."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise JsonValueError(
            f"is nested more than {max_depth()} levels deep", field=field
        ) from None
    except ValueError as exc:  # NaN or Infinity, or a value that contains itself
        _refuse(value, field)
        raise JsonValueError(f"is not JSON: {exc}", field=field) from None
    except TypeError as exc:
        raise JsonValueError(f"is not JSON: {exc}", field=field) from None
    if SURROGATE.search(text) or "\\u0000" in text:
        _refuse(value, field)
    if _too_deep(text):
        raise JsonValueError(f"is nested more than {max_depth()} levels deep", field=field)
    return text


class _Constant(str):
    """NaN, Infinity or -Infinity where the text had it (not JSON), until the walk names
    where it is."""


def _constant_of(odd: list):
    def parse_constant(name: str) -> _Constant:
        odd.append(name)
        return _Constant(name)

    return parse_constant


def _float_of(odd: list):
    def parse_float(text: str) -> float:
        number = float(text)
        if math.isinf(number):
            odd.append(text)
        return number

    return parse_float


def _too_deep(text: str) -> bool:
    """Whether JSON text nests more than the limit, counted without parsing it: brackets
    outside strings, innermost pairs removed one level per pass (each pass runs in C)."""
    limit = max_depth()
    if text.count("[") + text.count("{") <= limit:
        return False
    pairs = NOT_BRACKET.sub("", STRING.sub("", text)).translate(BRACKETS)
    for _ in range(limit):
        shorter = pairs.replace("()", "")
        if not shorter or shorter == pairs:
            return False  # within the limit (or unbalanced: the parser says what is wrong)
        pairs = shorter
    return True


def _problem(value) -> tuple[str, int] | None:
    """What makes a value unstorable, and the status that says so, if anything does."""
    if isinstance(value, _Constant):
        return f"holds {value}, which is not valid JSON (numbers must be finite)", 400
    if isinstance(value, float) and not math.isfinite(value):
        what = "NaN" if math.isnan(value) else "a number out of range (it overflows to infinity)"
        return f"holds {what}; JSON numbers must be finite", 422
    if isinstance(value, str):
        if "\x00" in value:
            return "holds a NUL character (\\u0000), which cannot be stored", 422
        if SURROGATE.search(value):
            return (
                "holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode",
                422,
            )
    return None


def _refuse(value, field: str) -> None:
    """Raise for the first value that cannot be stored, naming where it is. Iterative, and
    bounded by the depth limit (a value built in Python may even refer to itself)."""
    limit = max_depth()
    stack = [(field, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, dict | list | tuple) and depth >= limit:
            raise JsonValueError(f"is nested more than {limit} levels deep", field=field or "body")
        if isinstance(item, dict):
            for key, member in reversed(item.items()):
                problem = _problem(key)
                if problem:
                    reason, status = problem
                    raise JsonValueError(
                        f"{reason} (in a key)", field=path or "body", status=status
                    )
                stack.append((f"{path}.{key}" if path else str(key), member, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend(
                (f"{path}[{i}]", member, depth + 1) for i, member in reversed(list(enumerate(item)))
            )
        else:
            problem = _problem(item)
            if problem:
                reason, status = problem
                raise JsonValueError(reason, field=path or "body", status=status)
