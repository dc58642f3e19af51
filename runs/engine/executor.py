"""One execution of a run: claim it, replay it in the sandbox, record what happened.

The worker alone touches the database. The sandboxed program asks it to record each step as
it starts and finishes, sends log lines, and asks for waits (which may suspend the run).
Every write is conditional on this execution still owning the run, so a cancelled run or a
run taken over after its lease expired is never written by a stale execution.
"""

import dataclasses
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from loops_project import ids, strict_json
from runs import reactions, state
from runs.engine import http, waits
from runs.engine.heartbeat import heartbeat
from runs.engine.programs import Program, program_of
from runs.engine.sandbox import protocol
from runs.engine.sandbox.policy import CodeError
from runs.engine.zygote_client import ExitInfo, MessageRejected, get_zygote
from runs.models import LogEntry, LogLevel, RunStatus, Step, StepKind, StepStatus

logger = logging.getLogger(__name__)
LOG_LEVELS = set(LogLevel.values)
FINAL_STEP_STATUSES = {StepStatus.SUCCEEDED, StepStatus.REJECTED, StepStatus.SKIPPED}
# Messages whose content the run keeps, counted against LOOPS_MAX_RUN_BYTES by their size.
STORING_OPS = {
    protocol.LOG, protocol.STEP, protocol.STEP_DONE, protocol.RETRY, protocol.WAIT,
    protocol.HTTP, protocol.DONE,
}  # fmt: skip
# Messages that do not write a held step write first (Execution.held): a log line is written
# later anyway, a step's start and the run's end take it along, a step's end merges with it.
KEEP_HELD = {protocol.LOG, protocol.STEP, protocol.STEP_DONE, *protocol.OUTCOMES}


@dataclass
class Entry:
    """A step of the run as the execution knows it (no need to ask the database again)."""

    id: str
    status: str
    order: int
    name: str


@dataclass
class Execution:
    claim: state.Claim
    steps: dict = field(default_factory=dict)  # key -> Entry
    next_order: int = 0
    logs: list = field(default_factory=list)
    log_count: int = 0
    log_limit_noted: bool = False
    outcome: dict | None = None
    current_step: str | None = None
    # time.monotonic() by which the execution must have ended (its wall-clock limit). Work the
    # worker does on the execution's behalf (step.http) counts against it too.
    deadline: float = field(default_factory=lambda: time.monotonic() + settings.LOOPS_WALL_SECONDS)
    stored: int = 0  # bytes this execution stored (Run.stored_bytes has the earlier ones)
    # What the worker refused to record (a bound overstepped, a value it cannot store): the
    # run stops at its next step and fails with this error, whatever the sandbox reports.
    refused: dict | None = None
    # A step's row or end not written yet (see `hold`), with its key and since when.
    held: state.StepWrite | None = None
    held_key: str = ""
    held_since: float = 0.0
    claimed_at: float = field(default_factory=time.monotonic)
    started_steps: int = 0  # steps this execution started (not replayed)
    # A held write found the run no longer this execution's: every request is answered so.
    lost: bool = False

    @property
    def run(self):
        return self.claim.run

    @property
    def owner(self) -> state.Owner:
        return self.claim.owner

    def still_owned(self) -> bool:
        return self.owner.holds()

    # --- messages from the sandbox

    def handle(self, message: dict, size: int = 0) -> dict | None:
        """Act on a message of the execution; returns the reply to a request. A message the
        worker cannot act on ends the execution (MessageRejected), never the worker's turn:
        a turn that raised would leave the run `running` until its lease ran out, and the
        next execution would send the same message again."""
        try:
            return self._handle(message, size)
        except (OperationalError, InterfaceError):
            raise  # the database's, not the message's: the run is taken up after its lease
        except Exception as exc:
            logger.exception("run %s: a %r message of its execution could not be used",
                             self.run.pk, message.get("op"))  # fmt: skip
            raise MessageRejected(
                f"The execution sent a {str(message.get('op'))[:40]!r} message the worker "
                f"could not use ({type(exc).__name__})"
            ) from exc

    def _handle(self, message: dict, size: int) -> dict | None:
        op = message.get("op")
        if op not in KEEP_HELD:
            self.write_held()
        if op in STORING_OPS and not self.charge(size):
            return self.refuse_storage(op, message)
        if op == protocol.LOG:
            self.on_log(message)
            return None
        if op == protocol.STEP:
            return self.on_step(message)
        if op == protocol.STEP_DONE:
            self.on_step_done(message)
            return None
        if op == protocol.RETRY:
            return self.on_retry(message)
        if op == protocol.WAIT:
            self.flush_logs()
            return waits.handle_wait(self, message)
        if op == protocol.HTTP:
            reply = http.handle_http(self, message)
            if "output" in reply:
                self.charge(len(json.dumps(reply["output"])))
            return reply
        if op == protocol.REFUSED:
            return self.on_refused(message)
        if op in protocol.OUTCOMES:
            self.outcome = message
            return None
        return None  # unknown messages from the sandbox are ignored

    def on_refused(self, message: dict) -> dict | None:
        """A message holding a value no database can store: the step it was for fails with
        the reason (and so does the run); nothing of the value is kept."""
        original = message["original"]
        name = original.get("name") or original.get("key")
        # strict_json names a problem with the message as a whole "body …".
        reason = str(message["reason"])
        reason = "it" + reason[4:] if reason.startswith("body ") else reason
        text = f"Step '{name}' was given a value Loops cannot store: {reason}"
        error = self.refuse(text if name else reason, protocol.INVALID_VALUE)
        op = original.get("op")
        if op in {protocol.STEP, protocol.WAIT, protocol.HTTP}:
            if original.get("key") and original["key"] not in self.steps:
                kind = original.get("kind") if original.get("kind") in StepKind.values else op
                kind = kind if kind in StepKind.values else StepKind.DO
                self.open_step(original, kind=kind, status=StepStatus.FAILED, error=error,
                               finished_at=timezone.now())  # fmt: skip
            return {"limit": error["message"]}
        if op == protocol.STEP_DONE and original.get("key") in self.steps:
            self.on_step_done({**original, "status": "failed", "error": error})
        return None

    # --- what the worker refuses to record

    def refuse(self, message: str, kind: str) -> dict:
        self.refused = self.refused or {"message": message, "type": kind}
        return self.refused

    def charge(self, size: int) -> bool:
        """Count bytes the run keeps; False once it is over LOOPS_MAX_RUN_BYTES."""
        self.stored += size
        limit = settings.LOOPS_MAX_RUN_BYTES
        if self.run.stored_bytes + self.stored <= limit:
            return True
        self.refuse(
            f"The run exceeded the limit of {limit} bytes stored per run", protocol.LIMIT_EXCEEDED
        )
        return False

    def refuse_storage(self, op: str, message: dict) -> dict | None:
        error = self.refused
        if op in {protocol.STEP, protocol.WAIT}:
            return {"limit": error["message"]}
        if op == protocol.HTTP:
            return {"error": error}
        if op == protocol.STEP_DONE:
            self.on_step_done({**message, "status": "failed", "error": error, "output_json": None})
        return None  # a log line over the bound is dropped; the outcome is the refusal

    def on_log(self, message: dict) -> None:
        level = message.get("level") if message.get("level") in LOG_LEVELS else "info"
        self.note(level, str(message.get("message", ""))[:10000], message.get("step"))

    def note(self, level: str, text: str, step_key: str | None) -> None:
        """A line of the run's log, the program's or the worker's (a retry's), within
        LOOPS_MAX_LOG_LINES_PER_RUN."""
        limit = settings.LOOPS_MAX_LOG_LINES_PER_RUN
        if self.log_count >= limit:
            if not self.log_limit_noted:
                self.log_limit_noted = True
                self.logs.append(
                    self._log_entry(
                        "warning", f"Log limit of {limit} lines reached; later lines dropped.", None
                    )
                )
            return
        self.logs.append(self._log_entry(level, text, step_key))
        self.log_count += 1

    def _log_entry(self, level: str, text: str, step_key: str | None) -> LogEntry:
        step = self.steps.get(step_key) if step_key else None
        return LogEntry(
            run_id=self.run.pk,
            loop_id=self.run.loop_id,
            step_id=step.id if step else None,
            level=level,
            message=text,
            time=timezone.now(),
        )

    def flush_logs(self) -> None:
        if self.logs:
            LogEntry.objects.bulk_create(self.logs)
            self.logs = []

    def step_limit_error(self) -> str | None:
        limit = settings.LOOPS_MAX_STEPS_PER_RUN
        if len(self.steps) >= limit:
            return f"The run exceeded the limit of {limit} steps"
        return None

    def open_step(self, message: dict, *, kind: str, status: str, **fields) -> str | None:
        """Insert the step, or take over its row from an earlier execution; returns its id, or
        None when this execution no longer owns the run (one statement does both)."""
        key = str(message["key"])[:300]
        existing = self.steps.get(key)
        values = {
            "status": status,
            "started_at": timezone.now(),
            "finished_at": None,
            "error": None,
            "run_attempt": self.run.attempt,
            **fields,
        }
        if existing is not None:
            self.write_held()
            if not state.step_update(self.owner, existing.id, values):
                return None
            existing.status = status
            return existing.id
        held = self.take_held()
        parent = self.steps.get(message.get("parent"))
        name = str(message.get("name", key))[:200]
        row = {
            "id": ids.step_id(),
            "run_id": self.run.pk,
            "key": key,
            "name": name,
            "kind": kind,
            "order": self.next_order,
            "attempts": 0,
            "parent_id": parent.id if parent else None,
            "line": _int_or_none(message.get("line")),
            "iteration": _int_or_none(message.get("iteration")),
            "iteration_item": message.get("item"),
            **values,
        }
        write = state.StepRow(row)
        hold = held is None and self.may_hold_start(status)
        if not hold and not state.step_write(self.owner, write, then=held):
            return None
        self.steps[key] = Entry(row["id"], status, self.next_order, name)
        self.next_order += 1
        if hold:
            self.hold(key, write)
        return row["id"]

    def close_step(self, key: str, values: dict) -> None:
        """A step of this execution ends (or waits) with `values`."""
        self.write_held()
        entry = self.steps[key]
        if state.step_update(self.owner, entry.id, values):
            entry.status = values["status"]
        if self.current_step == key:
            self.current_step = None

    # --- step writes held for the next write
    #
    # A program goes on at once after a step almost always: a step's end waits up to
    # LOOPS_STEP_HOLD_SECONDS to be written with the execution's next write (the next step's
    # start, the run's end), in one statement. So does the first step's start, within that
    # time of the claim, which has just found the run this execution's: the step is answered
    # at once. A held write that finds the run no longer the execution's (cancelled meanwhile)
    # stops the execution at its next request, as a failed write of its own would have.

    def may_hold_start(self, status: str) -> bool:
        return (
            status == StepStatus.RUNNING
            and self.started_steps == 1
            and time.monotonic() - self.claimed_at < settings.LOOPS_STEP_HOLD_SECONDS
        )

    def hold(self, key: str, write: state.StepWrite) -> None:
        self.held, self.held_key, self.held_since = write, key, time.monotonic()
        if settings.LOOPS_STEP_HOLD_SECONDS <= 0:
            self.write_held()

    def hold_end(self, key: str, values: dict) -> None:
        """A step ended: its end is held, merged into its held row if its start is held."""
        held = self.held
        if isinstance(held, state.StepRow) and self.held_key == key:
            self.held = None
            self.hold(key, state.StepRow({**held.row, **values}))
        else:
            self.write_held()
            self.hold(key, state.StepEnd(self.steps[key].id, values))
        if self.current_step == key:
            self.current_step = None

    def take_held(self) -> state.StepWrite | None:
        """The held write, for a write that takes it along; its entry is updated as if that
        write succeeds (if it does not, the run is no longer this execution's)."""
        held, self.held = self.held, None
        if held is not None:
            self.steps[self.held_key].status = held.status
        return held

    def write_held(self) -> None:
        if self.held is not None:
            held, key, self.held = self.held, self.held_key, None
            if state.step_write(self.owner, held):
                self.steps[key].status = held.status
            else:
                self.lost = True

    def pause(self) -> float | None:
        """How long the worker may wait for the execution's next message (None: as long as
        it takes): a held write is written once it has waited LOOPS_STEP_HOLD_SECONDS, unless
        the outcome has arrived (the run's end takes it along)."""
        if self.held is None or self.outcome is not None:
            return None
        left = self.held_since + settings.LOOPS_STEP_HOLD_SECONDS - time.monotonic()
        if left > 0:
            return left
        self.write_held()
        return None

    def stop_reply(self) -> dict | None:
        if self.lost or not self.still_owned():
            return {"cancelled": True}
        error = self.step_limit_error() or (self.refused or {}).get("message")
        return {"limit": error} if error else None

    def on_step(self, message: dict) -> dict:
        """A step starts. This is the step boundary where a cancelled run stops."""
        self.flush_logs()
        if self.lost:
            return {"cancelled": True}
        self.started_steps += 1
        if message.get("key") not in self.steps:
            error = self.step_limit_error()
            if error:
                return {"limit": error}
        kind = message.get("kind") if message.get("kind") in StepKind.values else StepKind.DO
        opened = self.open_step(
            message,
            kind=kind,
            status=StepStatus.RUNNING,
            input=message.get("input"),
            metadata=message.get("metadata") if isinstance(message.get("metadata"), dict) else None,
        )
        if opened is None:
            return {"cancelled": True}
        self.current_step = message.get("key")
        return {"ok": True}

    def on_step_done(self, message: dict) -> None:
        """A step ends (a message without a reply: the program goes on meanwhile)."""
        self.flush_logs()
        entry = self.steps.get(message.get("key"))
        if entry is None:
            return
        status = StepStatus.SUCCEEDED if message.get("status") == "succeeded" else StepStatus.FAILED
        error = message.get("error")
        try:
            output = self.storable_output(message.get("output_json"), "The step's output",
                                          settings.LOOPS_MAX_STEP_OUTPUT_BYTES)  # fmt: skip
        except ValueError as exc:
            # The runtime checks this too; the worker decides (the sandbox may be lying).
            status, output, error = StepStatus.FAILED, None, self.refuse(*exc.args)
        self.hold_end(
            message["key"],
            {
                "status": status,
                "output": output,
                "error": _error_dict(error),
                "attempts": _int_or_none(message.get("attempts")) or 1,
                "finished_at": timezone.now(),
                "duration_ms": _int_or_none(message.get("duration_ms")),
            },
        )

    @staticmethod
    def storable_output(output_json, what: str, limit: int):
        """The value of an output's JSON text if the run may keep it; ValueError(message,
        kind) otherwise."""
        if output_json is None:
            return None
        if not isinstance(output_json, str):
            raise ValueError(f"{what} is missing", protocol.PROTOCOL_ERROR)
        if len(output_json) > limit:
            raise ValueError(
                f"{what} is {len(output_json)} bytes, over the limit of {limit} bytes",
                protocol.LIMIT_EXCEEDED,
            )
        try:
            return strict_json.parse(output_json, field="output")
        except strict_json.JsonValueError as exc:
            raise ValueError(
                f"{what} cannot be stored: {exc.message}", protocol.INVALID_VALUE
            ) from None

    def on_retry(self, message: dict) -> dict:
        """An attempt of a step failed and the step will be tried again after a delay. The
        run waits for it without holding the worker: a timer wakes it, and the next execution
        replays up to this step and tries again."""
        self.flush_logs()
        entry = self.steps.get(message.get("key"))
        if entry is None:
            return {"limit": "a step was retried before it started"}
        attempts = _int_or_none(message.get("attempts")) or 1
        error = _error_dict(message.get("error")) or {"message": "failed", "type": "Exception"}
        delay = message.get("delay")
        if not isinstance(delay, int | float) or isinstance(delay, bool):
            delay = 0.0
        delay = min(max(float(delay), 0.0), settings.LOOPS_MAX_WAIT_SECONDS)
        note = (
            f"Step '{entry.name}' attempt {attempts} failed: {error.get('type')}: "
            f"{error['message']}; retrying in {delay:g} s"
        )
        self.note(LogLevel.WARNING, note, message["key"])
        if delay <= 0:
            self.close_step(message["key"], {"status": StepStatus.RUNNING, "attempts": attempts,
                                             "error": error})  # fmt: skip
            self.current_step = message["key"]
            return {"ok": True}
        until = timezone.now() + timedelta(seconds=delay)
        values = {"status": StepStatus.WAITING, "attempts": attempts, "error": error,
                  "wake_at": until}  # fmt: skip
        if not state.step_update(self.owner, entry.id, values):
            return {"cancelled": True}
        entry.status = StepStatus.WAITING
        self.current_step = None
        state.step_wake_at(entry.id, until, self.owner)
        state.run_waits_for(
            self.run.pk,
            {
                "stepName": entry.name,
                "kind": "retry",
                "until": until.isoformat(),
                "attempt": attempts + 1,
            },
            self.owner,
        )
        return {"suspend": True}

    # --- the end of the execution

    def finish(self, exit_info: ExitInfo) -> str:
        """Record how the execution ended, in one statement where it can be."""
        self.flush_logs()
        outcome = self.checked_outcome(exit_info)
        op = outcome.get("op")
        cost = {"cpu_ms": exit_info.cpu_ms, "total_steps": len(self.steps), "stored": self.stored}
        if op in {protocol.DONE, protocol.STOPPED}:
            output = outcome.get("output") if op == protocol.DONE else None
            change = state.run_end(self.owner, self.run, RunStatus.SUCCEEDED, output=output,
                                   then=self.take_held(), **cost)  # fmt: skip
            return self.react(change)
        self.write_held()
        if op == protocol.SUSPENDED:
            change = state.run_suspend(self.owner, self.run, **cost)
        elif (
            op == protocol.CANCELLED
        ):  # the run was cancelled or taken over: its cost, nothing else
            change = state.run_end(self.owner, self.run, RunStatus.CANCELLED, **cost)
        else:
            error = _error_dict(outcome.get("error")) or self.crash_error(exit_info)
            change = self.fail(error, cost)
        return self.react(change)

    def react(self, change: state.Change | None) -> str:
        if change is None:
            return "abandoned"
        reactions.after(dataclasses.replace(change, has_webhooks=self.claim.has_webhooks))
        return change.status

    def fail(self, error: dict, cost: dict) -> state.Change | None:
        entry = self.steps.get(error.get("step") or "")
        step_name = entry.name if entry is not None else (error.get("step") or "")
        if any(e.status == StepStatus.RUNNING for e in self.steps.values()):
            state.steps_in_progress_fail(self.owner, error)
        kind = error.get("type")
        message = error["message"]
        detail = (
            f"{kind}: {message}"
            if kind not in (None, "", "RuntimeError", "Exception") and not message.startswith(kind)
            else message
        )
        text = f"Step '{step_name}' failed: {detail}" if step_name else detail
        change = state.run_end(
            self.owner, self.run, RunStatus.FAILED,
            error_message=text[:10000], error_type=str(kind or "")[:200],
            error_step=step_name[:200], error_traceback=str(error.get("traceback") or ""),
            **cost,
        )  # fmt: skip
        if change is not None:  # the run's error closes its log, where readers look for it
            self._log_entry(LogLevel.ERROR, text[:10000], error.get("step")).save()
        return change

    def checked_outcome(self, exit_info: ExitInfo) -> dict:
        """What the execution reported, unless the worker knows better: a broken protocol,
        a bound overstepped or a value it cannot store is the outcome, whatever the sandbox
        said. A "done" outcome comes back with its `output` value."""
        if exit_info.protocol_error:
            return {"op": protocol.FAILED, "error": {"message": exit_info.protocol_error,
                                              "type": protocol.PROTOCOL_ERROR}}  # fmt: skip
        outcome = self.outcome or {}
        if self.refused and outcome.get("op") != protocol.CANCELLED:
            return {"op": protocol.FAILED, "error": self.refused}
        if outcome.get("op") == protocol.DONE:
            output_json = outcome.get("output_json")
            try:
                output = self.storable_output(
                    "null" if output_json is None else output_json,
                    "The run's output", settings.LOOPS_MAX_OUTPUT_BYTES,
                )  # fmt: skip
            except ValueError as exc:
                return {
                    "op": protocol.FAILED,
                    "error": {"message": exc.args[0], "type": exc.args[1]},
                }
            return {"op": protocol.DONE, "output": output}
        return outcome

    def crash_error(self, exit_info: ExitInfo) -> dict:
        if exit_info.seal_error:
            message = f"The sandbox could not seal the execution: {exit_info.seal_error}"
            kind = "SandboxError"
        elif exit_info.timed_out:
            message = f"Wall-clock limit exceeded ({settings.LOOPS_WALL_SECONDS} s)"
            kind = "WallTimeExceeded"
        elif exit_info.signal in (signal.SIGXCPU, signal.SIGKILL) and exit_info.cpu_ms >= (
            settings.LOOPS_CPU_SECONDS * 1000 - 100
        ):
            message = f"CPU time limit exceeded ({settings.LOOPS_CPU_SECONDS} s)"
            kind = "CpuTimeExceeded"
        elif exit_info.signal in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
            message = (
                f"Memory limit exceeded ({settings.LOOPS_MEMORY_MB} MB) or the execution crashed"
            )
            kind = "ExecutionCrashed"
        elif exit_info.signal:
            message = f"The execution was killed (signal {exit_info.signal})"
            kind = "ExecutionKilled"
        elif exit_info.crashed:
            message = "The sandbox stopped unexpectedly"
            kind = "SandboxCrashed"
        else:
            message = "The execution ended without reporting a result"
            kind = "ExecutionLost"
        error = {"message": message, "type": kind}
        if self.current_step:
            error["step"] = self.current_step
        return error


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _error_dict(error) -> dict | None:
    if not isinstance(error, dict):
        return None
    clean = {
        k: error[k]
        for k in ("message", "type", "traceback", "step", "status", "headers", "body")
        if k in error
    }
    clean["message"] = str(clean.get("message", "error"))[:10000]
    return clean


def build_request(execution: Execution, program: Program) -> dict:
    """Everything the execution learns, sent over its own socket once it is sealed. A run on
    its first execution has no steps yet: nothing to ask the database."""
    run = execution.run
    saved, tried = {}, {}
    if run.executions > 1 or run.attempt > 1:
        rows = Step.objects.filter(run_id=run.pk).values_list(
            "key", "status", "output", "error", "run_attempt", "order", "id", "name", "attempts"
        )
        for key, status, output, error, run_attempt, order, pk, name, attempts in rows:
            execution.steps[key] = Entry(pk, status, order, name)
            if status == StepStatus.RUNNING and run_attempt == run.attempt and attempts:
                tried[key] = attempts  # a retry's delay is over: attempts go on from here
            if status in FINAL_STEP_STATUSES or status == StepStatus.FAILED:
                saved[key] = {
                    "status": status,
                    "output": output,
                    "error": error,
                    "run_attempt": run_attempt,
                }
    execution.next_order = max((e.order for e in execution.steps.values()), default=-1) + 1
    if run.executions > 1:
        # LOOPS_MAX_LOG_LINES_PER_RUN counts the earlier executions' lines too; past the limit,
        # the line that says so is one more than it.
        execution.log_count = LogEntry.objects.filter(run_id=run.pk).count()
        execution.log_limit_noted = execution.log_count > settings.LOOPS_MAX_LOG_LINES_PER_RUN
    return {
        "op": protocol.EXEC,
        "code": program.code,
        "program": program.compiled,
        "guards": settings.LOOPS_PYTHON_GUARDS,
        "event": {
            "body": run.input,
            "run_id": run.pk,
            "loop": program.loop_slug,
            "version": program.version_number,
            "trigger_type": run.trigger_type,
            "mode": run.mode,
            "attempt": run.attempt,
        },
        "saved": saved,
        "tried": tried,
        "limits": {
            "step_output_bytes": settings.LOOPS_MAX_STEP_OUTPUT_BYTES,
            "output_bytes": settings.LOOPS_MAX_OUTPUT_BYTES,
        },
    }


def sandbox_limits(execution: Execution) -> dict:
    """All the zygote learns of an execution."""
    return {
        "cpu_seconds": settings.LOOPS_CPU_SECONDS,
        "memory_mb": settings.LOOPS_MEMORY_MB,
        "wall_seconds": max(execution.deadline - time.monotonic(), 0.05),
        "max_processes": settings.LOOPS_MAX_PROCESSES,
    }


def execute(claim: state.Claim) -> str:
    """Execute a claimed run once. Returns what became of it, for the task log."""
    reactions.after(claim.change)
    execution = Execution(claim=claim)
    try:
        program = program_of(claim.run)
    except CodeError as exc:
        execution.outcome = {
            "op": protocol.FAILED,
            "error": {"message": str(exc), "type": protocol.CODE_ERROR},
        }
        return execution.finish(ExitInfo())
    request = build_request(execution, program)
    zygote = get_zygote()
    with heartbeat.watching(claim.owner):
        try:
            exit_info = zygote.execute(
                request, execution.handle, limits=sandbox_limits(execution),
                deadline=execution.deadline, pause=execution.pause,
            )  # fmt: skip
        except BaseException:
            # Whatever the program was waiting for will never come: start a fresh sandbox.
            zygote.stop()
            raise
        return execution.finish(exit_info)


def execute_run(run_id: str) -> str:
    """Claim this run (pending, or its worker dead) and execute it once."""
    claim = state.claim(run_id)
    if claim is None:
        return "not claimed"
    return execute(claim)
