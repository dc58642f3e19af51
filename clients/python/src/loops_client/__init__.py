"""A small typed client for the Loops HTTP API (docs/api.md of the Loops repository).

```
from loops_client import Client

with Client("https://loops.example.com", "lp_…") as loops:
    run = loops.trigger("greeting", {"name": "Ana"})
    run = loops.poll(run["id"])
```
"""

from loops_client._version import __version__
from loops_client.client import Client
from loops_client.errors import (
    AuthError,
    Conflict,
    InvalidRequest,
    LoopsError,
    NotFound,
    PollTimeout,
    RateLimited,
    ServerError,
)
from loops_client.types import (
    Batch,
    BatchCreated,
    ErrorDetail,
    Event,
    FieldError,
    Pending,
    RespondResult,
    Run,
    RunFilters,
    RunPage,
    RunStatus,
    Step,
)

__all__ = [
    "AuthError",
    "Batch",
    "BatchCreated",
    "Client",
    "Conflict",
    "ErrorDetail",
    "Event",
    "FieldError",
    "InvalidRequest",
    "LoopsError",
    "NotFound",
    "Pending",
    "PollTimeout",
    "RateLimited",
    "RespondResult",
    "Run",
    "RunFilters",
    "RunPage",
    "RunStatus",
    "ServerError",
    "Step",
    "__version__",
]
