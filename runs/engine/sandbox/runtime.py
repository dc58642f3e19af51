"""What a loop program sees as it runs, inside the sandbox: Loop, the step API, and the guards.

Runs in an execution's process (imported by the zygote before any organization's code exists),
so it imports only the standard library, RestrictedPython and its siblings: the policy (what a
program may be, policy.py) and the messages it exchanges with its worker (protocol.py).
Everything a program should not reach is behind a leading underscore, which RestrictedPython
refuses to let user code touch, or refused by the guards below.
"""

import base64
import builtins
import json
import marshal
import math
import random
import re
import string
import sys
import time
import traceback
import types
from datetime import UTC, datetime

from RestrictedPython import limited_builtins, safe_builtins
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
)
from RestrictedPython.transformer import INSPECT_ATTRIBUTES
from RestrictedPython.Utilities import utility_builtins

from . import policy, protocol

# --- What a program can name -----------------------------------------------------------------


class Loop:
    """Base class of every loop program: subclass it and define run(self, event, step)."""

    def run(self, event, step):
        raise TypeError("A loop must define run(self, event, step)")


class Retry:
    """Retry policy of step.do: `limit` retries after the first attempt, waiting
    `delay` seconds, then `delay * backoff`, `delay * backoff**2`, … (at most `max_delay`)."""

    def __init__(self, limit=2, delay=1.0, backoff=2.0, max_delay=60.0):
        if limit < 0 or delay < 0 or backoff < 1:
            raise ValueError("Retry needs limit >= 0, delay >= 0 and backoff >= 1")
        self.limit = int(limit)
        self.delay = float(delay)
        self.backoff = float(backoff)
        self.max_delay = float(max_delay)

    def wait_before(self, retry_number):
        try:
            return min(self.delay * self.backoff ** (retry_number - 1), self.max_delay)
        except OverflowError:  # backoff ** n beyond a float: max_delay long since
            return self.max_delay


DEFAULT_RETRY = Retry()
NO_RETRY = Retry(limit=0)


class StepTimeout(Exception):
    """A step or a wait took longer than its timeout."""


class HttpError(Exception):
    """An HTTP response with a 4xx or 5xx status (from step.http)."""

    def __init__(self, message, status=None, headers=None, body=None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.body = body


class ChildRunFailed(Exception):
    """The run started by step.run_loop failed."""


class Event:
    def __init__(self, data):
        self.body = data.get("body")
        self.run_id = data.get("run_id")
        self.loop = data.get("loop")
        self.version = data.get("version")
        self.trigger_type = data.get("trigger_type")
        self.mode = data.get("mode")
        self.attempt = data.get("attempt", 1)

    def __repr__(self):
        return f"Event(run_id={self.run_id!r}, body={self.body!r})"


class Response:
    """The answer of step.http: status, headers, body (JSON parsed when it is JSON), text."""

    def __init__(self, data):
        self.status = data.get("status")
        self.headers = data.get("headers") or {}
        self.body = data.get("body")
        self.text = data.get("text", "")
        self.url = data.get("url")
        self.ok = self.status is not None and self.status < 400

    def json(self):
        return self.body


# --- Control flow (BaseException, so a program's `except Exception` cannot swallow it) ------


class _Suspend(BaseException):
    """The run waits (sleep, event, person, scan, child run): this execution ends."""


class _Cancelled(BaseException):
    """The run was cancelled: stop at this step boundary."""


class _StopRun(BaseException):
    """A rejected approval with on_reject="stop" ends the run (succeeded)."""


class _LimitExceeded(BaseException):
    def __init__(self, message):
        super().__init__(message)
        self.message = message


# --- Policy: the RestrictedPython globals -----------------------------------------------------


class _ModuleProxy:
    """Exposes a module's public, non-module attributes only: `uuid.os` must not lead to os.

    `import m`, `m.name` and `from m import name` all come through __getattr__ here."""

    def __init__(self, module):
        object.__setattr__(self, "_module", module)

    def __getattr__(self, name):
        module = object.__getattribute__(self, "_module")
        if name.startswith("_") or name in policy.BLOCKED_MODULE_NAMES.get(module.__name__, ()):
            raise AttributeError(f"'{module.__name__}.{name}' is not available in a loop")
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            raise AttributeError(f"'{name}' is a module and is not available in a loop")
        return value

    def __setattr__(self, name, value):
        raise AttributeError("modules are read-only in a loop")

    def __repr__(self):
        return f"<module {object.__getattribute__(self, '_module').__name__!r}>"


def _defined_in_program(value) -> bool:
    func = getattr(value, "__func__", value)
    code = getattr(func, "__code__", None)
    return code is not None and code.co_filename == policy.FILENAME


def _is_formatter(value) -> bool:
    return isinstance(value, string.Formatter) or (
        isinstance(value, type) and issubclass(value, string.Formatter)
    )


_RAISE = object()


def guarded_getattr(obj, name, default=_RAISE):
    """Every attribute a program reads (`x.y`, getattr(), f-string fields) comes here."""
    if type(name) is not str:
        raise TypeError("an attribute name must be a string")
    if name.startswith("_") or name in INSPECT_ATTRIBUTES:
        raise AttributeError(f"'{name}' is not available in a loop")
    if isinstance(obj, types.ModuleType) or _is_formatter(obj):
        raise AttributeError(f"'{name}' is not available in a loop")
    try:
        value = getattr(obj, name)
    except AttributeError:
        if default is _RAISE:
            raise
        return default
    if name in policy.FORMAT_METHODS and not _defined_in_program(value):
        raise NotImplementedError(
            f"{name}() is not available in a loop (it reads attributes unchecked): use an f-string"
        )
    if _is_formatter(value) or isinstance(value, types.ModuleType):
        raise AttributeError(f"'{name}' is not available in a loop")
    return value


class _UserLogger:
    def __init__(self, name, emit):
        self.name = name
        self._emit = emit

    def log(self, level, msg, *args):
        text = str(msg)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError):
                text = " ".join([text, *map(str, args)])
        self._emit(level, text)

    def debug(self, msg, *args):
        self.log("debug", msg, *args)

    def info(self, msg, *args):
        self.log("info", msg, *args)

    def warning(self, msg, *args):
        self.log("warning", msg, *args)

    warn = warning

    def error(self, msg, *args):
        self.log("error", msg, *args)

    critical = error

    def exception(self, msg, *args):
        self.log("error", msg, *args)


class _LoggingModule:
    """The `logging` a loop imports: loggers whose lines become the run's log entries."""

    DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50

    def __init__(self, emit):
        self._emit = emit
        self._root = _UserLogger("root", emit)

    def getLogger(self, name=None):
        return _UserLogger(name or "root", self._emit)

    def basicConfig(self, *args, **kwargs):
        return None

    def debug(self, msg, *args):
        self._root.debug(msg, *args)

    def info(self, msg, *args):
        self._root.info(msg, *args)

    def warning(self, msg, *args):
        self._root.warning(msg, *args)

    def error(self, msg, *args):
        self._root.error(msg, *args)

    def exception(self, msg, *args):
        self._root.exception(msg, *args)


def _make_import(emit_log):
    cache = {}

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level != 0 or name not in policy.ALLOWED_MODULES:
            raise ImportError(
                f"Importing '{name}' is not allowed in a loop. "
                f"Allowed modules: {', '.join(sorted(policy.ALLOWED_MODULES))}."
            )
        if name not in cache:
            if name == "logging":
                cache[name] = _LoggingModule(emit_log)
            else:
                cache[name] = _ModuleProxy(__import__(name))
        return cache[name]

    return guarded_import


class _Printer:
    """RestrictedPython's print hook: each print() becomes one info log line."""

    def __init__(self, emit):
        self._emit = emit

    def __call__(self, _getattr_=None):
        return self

    def _call_print(self, *objects, **kwargs):
        sep = kwargs.get("sep", " ")
        sep = " " if sep is None else str(sep)
        self._emit("info", sep.join(str(o) for o in objects))


def _write_guard(ob):
    # The stock guard refuses `self.x = …`; a program's own Loop instance, dicts and lists
    # are fair game. Never the Loop class itself.
    if type(ob) in (dict, list) or (isinstance(ob, Loop) and not isinstance(ob, type)):
        return ob
    return full_write_guard(ob)


def _inplacevar(op, x, y):
    ops = {
        "+=": lambda: x + y, "-=": lambda: x - y, "*=": lambda: x * y, "/=": lambda: x / y,
        "//=": lambda: x // y, "%=": lambda: x % y, "**=": lambda: x**y, "|=": lambda: x | y,
        "&=": lambda: x & y, "^=": lambda: x ^ y, "<<=": lambda: x << y, ">>=": lambda: x >> y,
    }  # fmt: skip
    if op not in ops:
        raise SyntaxError(f"operator {op} is not supported")
    return ops[op]()


_FULL_BUILTINS = (
    "range", "tuple", "dict", "list", "set", "frozenset", "sorted", "enumerate", "zip", "min",
    "max", "sum", "any", "all", "map", "filter", "reversed", "iter", "next", "isinstance",
    "issubclass", "Exception", "ValueError", "KeyError", "TypeError", "RuntimeError",
    "IndexError", "ArithmeticError", "ZeroDivisionError", "LookupError", "StopIteration",
    "NotImplementedError", "AssertionError", "AttributeError", "ImportError", "MemoryError",
    "OverflowError", "bytes", "bytearray", "object", "super", "property", "staticmethod",
    "classmethod", "format", "hash", "id", "ascii",
)  # fmt: skip


_PROGRAM_NAMES = {
    "Loop": Loop,
    "Retry": Retry,
    "StepTimeout": StepTimeout,
    "HttpError": HttpError,
    "ChildRunFailed": ChildRunFailed,
}


def make_globals(emit_log, *, guards: bool = True):
    """Fresh globals for one execution of a loop module. Without guards (LOOPS_PYTHON_GUARDS=0,
    for testing the sandbox's OS layers) the program is plain Python with every builtin."""
    if not guards:
        b = dict(vars(builtins))
        b["print"] = _Printer(emit_log)._call_print
        return {"__builtins__": b, "__name__": "loop_program", **_PROGRAM_NAMES}
    b = dict(safe_builtins)
    b.update(limited_builtins)
    b.update(utility_builtins)
    for name in _FULL_BUILTINS:
        b[name] = getattr(builtins, name)
    # RestrictedPython offers these modules as builtins through its own wrapper; ours applies
    # the same rules as an import does.
    for name, module in (("string", string), ("math", math), ("random", random),
                         ("whrandom", random)):  # fmt: skip
        b[name] = _ModuleProxy(module)
    b["getattr"] = guarded_getattr
    b["_getattr_"] = guarded_getattr
    b["__import__"] = _make_import(emit_log)
    printer = _Printer(emit_log)
    return {
        "__builtins__": b,
        "__metaclass__": type,
        "__name__": "loop_program",
        "_getattr_": guarded_getattr,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_write_": _write_guard,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_inplacevar_": _inplacevar,
        "_print_": printer,
        "_apply_": lambda f, *a, **kw: f(*a, **kw),
        **_PROGRAM_NAMES,
    }


# --- Compile and validate ---------------------------------------------------------------------


def find_loop_class(namespace):
    classes = [
        v
        for v in namespace.values()
        if isinstance(v, type) and issubclass(v, Loop) and v is not Loop
    ]
    if len(classes) != 1:
        raise TypeError("the program must define exactly one Loop subclass")
    return classes[0]


# --- The step API -----------------------------------------------------------------------------


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _text(value, limit=None):
    """Text the run can keep: a lone surrogate or a NUL (which no database column holds) in a
    log line or an error message becomes U+FFFD."""
    text = str(value)[:limit]
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def _utcnow_iso():
    return datetime.now(UTC).isoformat()


def _user_line():
    """The line of the loop program that called into the step API."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == policy.FILENAME:
            return frame.f_lineno
        frame = frame.f_back
    return None


def _error_info(exc):
    info = {"message": _text(str(exc) or type(exc).__name__), "type": type(exc).__name__}
    # Only the program's own frames: the runtime's are noise to the person reading it.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == policy.FILENAME]
    tb = ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    tb += traceback.format_exception_only(type(exc), exc)
    info["traceback"] = _text("".join(tb)[-20000:])
    if isinstance(exc, HttpError):
        details = {"status": exc.status, "headers": exc.headers, "body": exc.body}
        try:
            json.dumps(details, allow_nan=False)
        except (TypeError, ValueError):
            details = {"status": None, "headers": {}, "body": _text(repr(exc.body), 10000)}
        info.update(details)
    if isinstance(exc, MemoryError):
        info["message"] = "Memory limit exceeded"
    return info


class _Timer:
    """step.do(timeout=…): raises StepTimeout inside fn after the given seconds."""

    def __init__(self, seconds, name):
        self.seconds = seconds
        self.name = name

    def __enter__(self):
        if self.seconds:
            import signal

            def on_alarm(signum, frame):
                raise StepTimeout(f"Step '{self.name}' timed out after {self.seconds} s")

            self._old = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, float(self.seconds))
        return self

    def __exit__(self, *exc):
        if self.seconds:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)
        return False


_NO_BODY = object()  # step.run_loop without a body


class Step:
    """The `step` argument of run(). Each method is one recorded, checkpointed step."""

    def __init__(self, channel, saved, run_attempt, limits, tried=None):
        self._channel = channel
        self._saved = saved
        self._tried = tried or {}
        self._run_attempt = run_attempt
        self._limits = limits
        self._seen = {}
        self._parent = None
        self._iteration = None
        self._item = None
        self._page = None
        self._suspended = False
        self._current = None
        self._failed = None  # (step name, exception) of the last failed step
        self.attempt = None  # the attempt of the step.do in progress (1, 2, …), for its fn
        # Steps an earlier execution finished that this one has not reached again. While any
        # remain, the program is replaying: what it prints was logged the first time.
        self._replay = {key for key, entry in saved.items() if self._is_final(entry)}

    @property
    def replaying(self):
        """True while the program re-runs work an earlier execution finished (as Temporal's
        replay-aware logger, its print() and logging output is not recorded again)."""
        return bool(self._replay)

    # --- bookkeeping

    def _key(self, name):
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a step needs a non-empty name")
        if len(name) > 200:
            raise ValueError("a step name is at most 200 characters")
        if _text(name) != name:
            raise ValueError("a step name cannot hold a NUL or a lone surrogate")
        n = self._seen.get(name, 0) + 1
        self._seen[name] = n
        return name if n == 1 else f"{name}#{n}"

    def _is_final(self, saved):
        status = saved["status"]
        return status in protocol.FINAL or (
            status == "failed" and saved.get("run_attempt") == self._run_attempt
        )

    def _final(self, key):
        """The saved result of a step an earlier execution finished, or None: the step is
        new work, and so is everything after it."""
        saved = self._saved.get(key)
        if saved is not None and self._is_final(saved):
            self._replay.discard(key)
            return saved
        self._replay.clear()
        return None

    def _check_alive(self):
        if self._suspended:
            raise _Suspend()

    def _begin(self, key, name, kind, **extra):
        msg = {
            "op": protocol.STEP,
            "key": key,
            "name": name,
            "kind": kind,
            "line": _user_line(),
            "parent": self._parent,
            "iteration": self._iteration,
            "item": self._item,
        }
        msg.update(extra)
        self._ask(msg)
        self._current = name

    def _ask(self, message):
        """A request to the worker, whose reply may stop the program here: the run was
        cancelled, a limit was reached, or the run waits (no worker held meanwhile)."""
        reply = self._channel.request(message)
        if reply.get("cancelled"):
            raise _Cancelled()
        if reply.get("limit"):
            raise _LimitExceeded(reply["limit"])
        if reply.get("suspend"):
            self._suspended = True
            raise _Suspend()
        return reply

    def _encode(self, name, value):
        try:
            encoded = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"Step '{name}' returned a value that is not JSON-serializable: {exc}"
            ) from None
        limit = self._limits.get("step_output_bytes")
        if limit and len(encoded) > limit:
            raise _StepOutputTooLarge(
                f"Step '{name}' output is {len(encoded)} bytes, over the limit of {limit} bytes"
            )
        return encoded

    def _finish(self, key, status, *, output=None, error=None, attempts=1, started=None):
        msg = {"op": protocol.STEP_DONE, "key": key, "status": status, "attempts": attempts}
        if output is not None:
            msg["output_json"] = output
        if error is not None:
            msg["error"] = error
        if started is not None:
            msg["duration_ms"] = int((time.monotonic() - started) * 1000)
        # No reply to wait for: the worker handles messages in order, so this result is
        # saved before it answers the next step's request, and before the run's outcome.
        self._channel.send(msg)
        self._current = None

    # --- the API

    def do(self, name, fn, *, retries=None, timeout=None, metadata=None):
        """Run fn() as a checkpointed step and return its (JSON) result."""
        self._check_alive()
        key = self._key(name)
        saved = self._final(key)
        if saved is not None:
            if saved["status"] == "succeeded":
                return saved.get("output")
            raise self._replayed_failure(name, saved)
        if not callable(fn):
            raise TypeError(f"step.do('{name}', fn): fn must be callable")
        policy = (
            retries
            if isinstance(retries, Retry)
            else (Retry(limit=retries) if isinstance(retries, int) else DEFAULT_RETRY)
        )
        self._begin(key, name, "do", metadata=metadata)
        started = time.monotonic()
        attempt = self._tried.get(key, 0)  # attempts before a retry's delay (an earlier run)
        while True:
            attempt += 1
            self.attempt = attempt
            try:
                with _Timer(timeout, name):
                    result = fn()
                encoded = self._encode(name, result)
            except (_Suspend, _Cancelled, _StopRun, _LimitExceeded):
                raise
            except _StepOutputTooLarge as exc:
                self._finish(
                    key, "failed", error=_error_info(exc), attempts=attempt, started=started
                )
                self._failed = (name, exc)
                raise
            except Exception as exc:
                if attempt <= policy.limit and not isinstance(exc, TypeError | MemoryError):
                    # The delay holds no worker: the run waits for it (a timer) and the next
                    # execution tries again.
                    self._retry_after(key, attempt, policy.wait_before(attempt), exc)
                    continue
                self._finish(
                    key, "failed", error=_error_info(exc), attempts=attempt, started=started
                )
                self._failed = (name, exc)
                raise
            self._finish(key, "succeeded", output=encoded, attempts=attempt, started=started)
            return json.loads(encoded)

    def _retry_after(self, key, attempt, delay, exc):
        self._ask(
            {"op": protocol.RETRY, "key": key, "attempts": attempt, "delay": delay,
             "error": _error_info(exc)}
        )  # fmt: skip

    def _wait(self, name, kind, **params):
        """A step that may suspend the run until something arrives."""
        self._check_alive()
        key = self._key(name)
        saved = self._final(key)
        if saved is None:
            reply = self._ask(
                {"op": protocol.WAIT, "key": key, "name": name, "kind": kind, "line": _user_line(),
                 "parent": self._parent, "iteration": self._iteration, "item": self._item,
                 "params": params}
            )  # fmt: skip
            saved = reply["saved"]
        return key, saved

    def sleep(self, name, seconds):
        """Suspend the run for `seconds` without holding a worker."""
        if not isinstance(seconds, int | float) or seconds < 0 or math.isnan(seconds):
            raise ValueError("step.sleep needs a number of seconds >= 0")
        self._wait(name, "sleep", seconds=seconds)
        return None

    def sleep_until(self, name, when):
        """Suspend the run until `when` (a timezone-aware datetime or an ISO 8601 string)."""
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise ValueError("step.sleep_until needs a timezone-aware datetime")
            when = when.isoformat()
        if not isinstance(when, str):
            raise ValueError("step.sleep_until needs a datetime or an ISO 8601 string")
        self._wait(name, "sleep", until=when)
        return None

    def wait_for_event(self, name, event_type, timeout=None):
        """Suspend until an event of `event_type` is posted to the run; return its payload."""
        _, saved = self._wait(name, "event", event_type=str(event_type), timeout=timeout)
        return self._resolved(name, saved)

    def wait_for_scan(self, name, subject=None, timeout=None):
        """FACIAL_SCAN: request a scan of `subject`, suspend until its result arrives."""
        _, saved = self._wait(name, "scan", subject=subject, timeout=timeout)
        return self._resolved(name, saved)

    def ask(self, name, prompt, timeout=None, *, assignee=None, remind_after=None,
            escalate_after=None):  # fmt: skip
        """Ask a person a question; the run waits for the answer, which is returned. `assignee`
        ("role:<role>", "user:<username>" or a list) limits who may answer; `remind_after` and
        `escalate_after` (seconds) send the approval.reminder and approval.escalated webhook
        events and mark the wait overdue in the inbox (the worker checks them)."""
        _, saved = self._wait(
            name, "input", prompt=str(prompt), timeout=timeout, assignee=assignee,
            remind_after=remind_after, escalate_after=escalate_after,
        )  # fmt: skip
        return self._resolved(name, saved)

    def approve(self, name, prompt, tool=None, tool_input=None, on_reject="stop", timeout=None,
                *, assignee=None, remind_after=None, escalate_after=None):  # fmt: skip
        """An approval gate. Returns {"approved": bool, "reason": str|None}. `assignee`,
        `remind_after` and `escalate_after` as for ask()."""
        if on_reject not in ("stop", "return"):
            raise ValueError('on_reject must be "stop" or "return"')
        _, saved = self._wait(
            name, "approval", prompt=str(prompt), tool=tool, tool_input=tool_input,
            on_reject=on_reject, timeout=timeout, assignee=assignee, remind_after=remind_after,
            escalate_after=escalate_after,
        )  # fmt: skip
        if saved["status"] == "rejected":
            if on_reject == "stop":
                raise _StopRun()
            return saved.get("output") or {"approved": False, "reason": None}
        return self._resolved(name, saved)

    def run_loop(self, name, loop, body=_NO_BODY):
        """Run another loop of the organization and return its output (or raise its error).
        Without a body the child's event.body is an empty object, as for a trigger without one."""
        _, saved = self._wait(name, "child", loop=str(loop), body={} if body is _NO_BODY else body)
        return self._resolved(name, saved)

    def http(self, name, method, url, *, headers=None, params=None, json=None, data=None,
             timeout=None, pages=1):  # fmt: skip
        """An HTTP request made by the worker; 4xx/5xx raise HttpError. With pages > 1,
        follows `Link: rel="next"` and records one entry per page; returns the responses."""
        self._check_alive()
        key = self._key(name)
        saved = self._final(key)
        if saved is not None:
            if saved["status"] == "succeeded":
                out = saved.get("output")
                return [Response(r) for r in out] if isinstance(out, list) else Response(out)
            raise self._replayed_failure(name, saved)
        request = {
            "method": str(method).upper(), "url": str(url), "headers": headers or {},
            "params": params or {}, "json": json, "data": data, "timeout": timeout,
            "pages": int(pages),
        }  # fmt: skip
        self._begin(key, name, "http", input=request)
        reply = self._channel.request({"op": protocol.HTTP, "key": key, "request": request})
        if reply.get("error"):
            exc = _rebuild_error(reply["error"])
            self._failed = (name, exc)
            raise exc
        out = reply["output"]
        return [Response(r) for r in out] if isinstance(out, list) else Response(out)

    def each(self, name, items):
        """Iterate over items; steps inside carry the iteration index and item."""
        self._check_alive()
        items = list(items)
        key = self._key(name)
        saved = self._final(key)
        if saved is None:
            self._begin(key, name, "each", input={"count": len(items)})
        outer = (self._parent, self._iteration, self._item)
        try:
            for index, item in enumerate(items):
                self._parent, self._iteration, self._item = key, index, item
                yield index, item
        finally:
            self._parent, self._iteration, self._item = outer
        if saved is None:
            self._finish(key, "succeeded", output=json.dumps({"count": len(items)}))

    def _resolved(self, name, saved):
        if saved["status"] == "failed":
            raise self._replayed_failure(name, saved)
        return saved.get("output")

    def _replayed_failure(self, name, saved):
        exc = _rebuild_error(saved.get("error"))
        self._failed = (name, exc)
        return exc


class _StepOutputTooLarge(Exception):
    pass


_REBUILDABLE = {
    "StepTimeout": StepTimeout,
    "HttpError": HttpError,
    "ChildRunFailed": ChildRunFailed,
}


def _rebuild_error(error):
    """A failed step's exception as the program first met it, so that a replay takes the same
    `except` branch: the runtime's own errors, or a built-in exception of the same name (a
    class of the program's own, or one that cannot be rebuilt from a message, is RuntimeError)."""
    error = error or {}
    kind = error.get("type")
    message = error.get("message", "step failed")
    cls = _REBUILDABLE.get(kind)
    if cls is HttpError:
        return HttpError(message, error.get("status"), error.get("headers"), error.get("body"))
    if cls is None:
        builtin = getattr(builtins, str(kind), None)
        is_exception = isinstance(builtin, type) and issubclass(builtin, Exception)
        cls = builtin if is_exception and builtin.__module__ == "builtins" else RuntimeError
    try:
        return cls(message)
    except TypeError:  # UnicodeDecodeError and the like take more than a message
        return RuntimeError(message)


# --- One execution ---------------------------------------------------------------------------


class Channel:
    """JSON lines to and from the worker over this execution's own socket."""

    def __init__(self, rfile, wfile):
        self.rfile = rfile
        self.wfile = wfile

    def send(self, message):
        self.wfile.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self.wfile.flush()

    def request(self, message):
        self.send(message)
        line = self.rfile.readline()
        if not line:
            raise SystemExit(3)  # the worker went away
        return json.loads(line)


def execute_request(request, channel):
    """Run the program the worker compiled for this execution (never shared with another)."""
    # Written by the worker, which compiled it: not the program's to choose.
    code_obj = marshal.loads(base64.b64decode(request["program"]))  # noqa: S302
    execute(code_obj, request, channel, guards=bool(request.get("guards", True)))


def _encode_output(result, limits):
    encoded = json.dumps(result, allow_nan=False)
    limit = limits.get("output_bytes")
    if limit and len(encoded) > limit:
        raise _LimitExceeded(
            f"run() returned {len(encoded)} bytes of output, over the limit of {limit} bytes"
        )
    return encoded


def execute(code_obj, request, channel, *, guards=True):
    """Run a program once. Reports the outcome over the channel; never raises."""
    step = None

    def emit(level, message):
        if step is not None and step.replaying:
            return  # logged by the execution that did this work first
        channel.send(
            {"op": protocol.LOG, "level": level, "message": _text(message, 10000),
             "time": _utcnow_iso(), "step": step._current if step is not None else None}
        )  # fmt: skip

    import linecache

    code = request.get("code", "")
    linecache.cache[policy.FILENAME] = (len(code), None, code.splitlines(True), policy.FILENAME)
    limits = request.get("limits", {})
    try:
        step = Step(channel, request.get("saved", {}), request["event"].get("attempt", 1), limits,
                    request.get("tried"))  # fmt: skip
        namespace = make_globals(emit, guards=guards)
        exec(code_obj, namespace)  # noqa: S102 - compiled by RestrictedPython under our policy
        loop_class = find_loop_class(namespace)
        result = loop_class().run(Event(request["event"]), step)
        if step._suspended:
            channel.send({"op": protocol.SUSPENDED})
            return
        channel.send({"op": protocol.DONE, "output_json": _encode_output(result, limits)})
    except _Suspend:
        channel.send({"op": protocol.SUSPENDED})
    except _Cancelled:
        channel.send({"op": protocol.CANCELLED})
    except _StopRun:
        channel.send({"op": protocol.STOPPED})
    except _LimitExceeded as exc:
        error = {"message": exc.message, "type": protocol.LIMIT_EXCEEDED}
        channel.send({"op": protocol.FAILED, "error": error})
    except (TypeError, ValueError) as exc:
        if step is not None and step._suspended:
            channel.send({"op": protocol.SUSPENDED})
            return
        info = _error_info(exc)
        if step is not None and step._failed and step._failed[1] is exc:
            info["step"] = step._failed[0]
        elif "JSON" in str(exc) or "serializable" in str(exc):
            info["message"] = f"run() returned a value that is not JSON-serializable: {exc}"
        channel.send({"op": protocol.FAILED, "error": info})
    except BaseException as exc:
        if step is not None and step._suspended:
            channel.send({"op": protocol.SUSPENDED})
            return
        info = _error_info(exc)
        if step is not None and step._failed and step._failed[1] is exc:
            info["step"] = step._failed[0]
        elif step is not None and step._current:
            info["step"] = step._current
        channel.send({"op": protocol.FAILED, "error": info})
