"""The API's objects as TypedDicts, keyed exactly as the API sends them (camelCase).

Values are the decoded JSON, unchanged: timestamps stay ISO 8601 strings in UTC
(`datetime.fromisoformat` reads them), a run's `input` and `output` are whatever JSON they hold.
"""

from datetime import datetime
from typing import Any, Literal, NotRequired, Required, TypedDict

type RunStatus = Literal["pending", "running", "waiting", "succeeded", "failed", "cancelled"]
type StepStatus = Literal["running", "succeeded", "failed", "waiting", "rejected", "skipped"]
type PendingKind = Literal["input", "approval", "event", "sleep", "scan", "child"]

ENDED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
"""The statuses a run never leaves (a resume or a restart makes it, or a new run, go on)."""

FOR_A_PERSON: frozenset[str] = frozenset({"input", "approval"})
"""The kinds of wait that a person ends (`respond`): `step.ask` and `step.approve`."""


class Pending(TypedDict, total=False):
    """What a waiting run waits for. Only `kind` is always there; the rest depends on it."""

    kind: Required[PendingKind]
    prompt: str | None
    stepName: str | None
    tool: Any
    toolInput: Any
    eventType: str | None
    scanId: str | None
    until: str | None
    childRunId: str | None


class ErrorDetail(TypedDict):
    message: str | None
    type: str | None
    stepName: str | None
    traceback: str | None


class Step(TypedDict):
    id: str
    order: int
    name: str
    kind: str
    status: StepStatus
    input: Any
    output: Any
    error: Any
    attempts: int
    startedAt: str | None
    finishedAt: str | None
    durationMs: int | None
    metadata: Any
    iteration: int | None
    iterationItem: NotRequired[Any]
    page: NotRequired[int | None]
    parentId: str | None
    line: int | None


class Run(TypedDict):
    """A run. `steps` is a list only when one run is retrieved (`Client.get_run`, `poll`);
    lists carry null. In lists, an input or output longer than the server's preview size
    comes as null with `inputTruncated`/`outputTruncated` true and its start in
    `inputPreview`/`outputPreview`."""

    id: str
    loopId: str
    loopSlug: str
    version: int | None
    status: RunStatus
    triggerType: str
    mode: str
    input: Any
    output: Any
    inputTruncated: NotRequired[bool]
    inputPreview: NotRequired[str | None]
    outputTruncated: NotRequired[bool]
    outputPreview: NotRequired[str | None]
    error: str | None
    errorDetail: NotRequired[ErrorDetail | None]
    createdAt: str
    startedAt: str | None
    completedAt: str | None
    durationMs: int | None
    cpuTimeMs: int
    attempt: int
    restartedFrom: str | None
    batchId: str | None
    parentRunId: NotRequired[str | None]
    totalSteps: int
    pending: Pending | None
    steps: NotRequired[list[Step] | None]


class RunPage(TypedDict):
    """One page of `GET /api/v1/runs`: pass `nextCursor` as `cursor` for the next one."""

    data: list[Run]
    limit: int
    offset: int
    hasMore: bool
    nextCursor: str | None


class RespondResult(TypedDict):
    """The run a person answered, queued to carry on (its status is usually `pending`)."""

    id: str
    status: RunStatus


class Event(TypedDict):
    """An event posted to a run; `consumed` says whether a waiting step took it at once."""

    id: str
    type: str
    consumed: bool


class BatchCreated(TypedDict):
    batchId: str
    count: int


class Batch(TypedDict):
    id: str
    loopId: str
    count: int
    counts: dict[str, int]  # runs of the batch by status, every status present
    createdAt: str


class FieldError(TypedDict, total=False):
    """One problem with a request, as an error's `details` lists them."""

    field: Required[str | None]
    message: str
    line: int


class RunFilters(TypedDict, total=False):
    """The filters of `GET /api/v1/runs`, as keyword arguments of `Client.runs` and
    `Client.list_runs` (snake_case here, camelCase on the wire).

    - `status`: a status, or several (sent as a comma list).
    - `loop`: a loop's id or slug.
    - `created_after` (inclusive), `created_before` (exclusive): an aware datetime, or an
      ISO 8601 string with a time zone.
    - `step_status`: runs having a step of that status.
    - `triggered_by`: a token id, or a member's user id or username.
    - `sort`: `createdAt`, `startedAt`, `completedAt`, `status` or `durationMs`, with `-` in
      front for descending; the server's default is `-createdAt` (newest first).
    - `limit`: the page size, 1 to 100.
    """

    status: str | list[str] | tuple[str, ...]
    loop: str
    trigger_type: Literal["user", "api_token", "system"]
    mode: Literal["live", "test"]
    batch: str
    created_after: datetime | str
    created_before: datetime | str
    step_status: Literal["failed", "rejected"]
    triggered_by: str
    sort: str
    limit: int
