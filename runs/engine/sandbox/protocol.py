"""The messages between a worker and an execution, and between a worker and its zygote: the
one vocabulary of both sides of the sockets (runs.engine.zygote_client on the worker's side;
the zygote and the runtime inside the sandbox).

Every message on an execution's socket is one line of JSON, an object whose "op" says what it
is. The worker answers each request with one line; the execution's last message is how it
ended. The zygote's control socket carries one JSON object per datagram.
"""

# An execution asks; the worker answers (a result, {"ok"}, {"suspend"}, {"cancelled"},
# {"limit": message} or {"error": …}).
STEP = "step"  # a step starts (the step boundary where a cancelled run stops)
RETRY = "retry"  # an attempt failed; the step is tried again after a delay
WAIT = "wait"  # sleep, event, person, approval, scan, child run
HTTP = "http"  # step.http, made by the worker
REQUESTS = frozenset({STEP, RETRY, WAIT, HTTP})

# An execution tells, with no answer.
LOG = "log"
STEP_DONE = "step_done"
SEALED = "sealed"  # the execution is sealed (what was applied)
SEAL_FAILED = "sealfailed"

# How an execution ended: its last message.
DONE = "done"  # run() returned (output_json)
FAILED = "failed"  # an exception escaped run() (error)
SUSPENDED = "suspended"  # the run waits
CANCELLED = "cancelled"  # the run is no longer this execution's
STOPPED = "stopped"  # a rejected approval with on_reject="stop"
OUTCOMES = frozenset({DONE, FAILED, SUSPENDED, CANCELLED, STOPPED})

# What the worker makes of a message it cannot store (never sent by an execution).
REFUSED = "refused"

# The worker and its zygote.
READY = "ready"  # the zygote is up (its uid, seccomp)
EXEC = "exec"  # an execution's limits, with its socket as SCM_RIGHTS
KILL = "kill"  # end the execution now
EXIT = "exit"  # how the execution's process ended, its CPU time

# Step statuses the runtime reports and replays.
SUCCEEDED = "succeeded"
REJECTED = "rejected"
SKIPPED = "skipped"
FINAL = frozenset({SUCCEEDED, REJECTED, SKIPPED})

# Error types the worker records for what the sandbox did not raise itself.
LIMIT_EXCEEDED = "LimitExceeded"
INVALID_VALUE = "InvalidValue"
PROTOCOL_ERROR = "ProtocolError"
CODE_ERROR = "CodeError"
