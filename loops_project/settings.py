"""Settings for Loops, read from the environment.

Embedded defaults (SQLite in WAL mode, the django-q2 ORM broker, DEBUG on) just work on a
laptop; production sets DATABASE_URL, DJANGO_SECRET_KEY, DJANGO_DEBUG=0, DJANGO_ALLOWED_HOSTS
and optionally REDIS_URL and LOOPS_WORKERS.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {raw!r}")


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None


DEBUG = env_bool("DJANGO_DEBUG", True)
_INSECURE_KEY = "django-insecure-loops-embedded-default-key-change-me-in-production-0123456789"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", _INSECURE_KEY)
if not DEBUG and SECRET_KEY == _INSECURE_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
ALLOWED_HOSTS = [
    h for h in env_str("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h
]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "django_ace",
    "accounts",
    "loops",
    "runs",  # before django_q: its `qcluster` command (with the clock) is the one that runs
    "django_q",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from the application itself, before anything that reads a session or a body.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "loops_project.middleware.ApiBodySizeMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "accounts.middleware.CurrentOrganizationMiddleware",
]

ROOT_URLCONF = "loops_project.urls"
WSGI_APPLICATION = "loops_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.organization",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while a worker writes; IMMEDIATE avoids lock upgrades
    # that would otherwise fail with "database is locked" under concurrent writers.
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file (not :memory:) so that a worker subprocess in the tests shares the test database.
    _db["TEST"] = {
        "NAME": str(
            BASE_DIR / "var" / f"test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.sqlite3"
        )
    }
else:
    # django-q2 opens a new connection per broker call without persistent connections.
    _db["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 600)
    _db["CONN_HEALTH_CHECKS"] = True
    # The statements on every trigger and every step (loops_project.sql) are prepared on each
    # connection: parsed and planned once instead of per request (planning cost more than
    # running them). Django turns psycopg's preparing off unless a threshold is set; the ORM's
    # own queries bind parameters client-side and are never prepared. Off
    # (DATABASE_PREPARED_STATEMENTS=0) behind a pooler that cannot keep prepared statements.
    if env_bool("DATABASE_PREPARED_STATEMENTS", True):
        _db.setdefault("OPTIONS", {})["prepare_threshold"] = 5

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ["REDIS_URL"],
    }
    if os.environ.get("REDIS_URL")
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic` writes here once per release; WhiteNoise serves it (DEBUG off) with
# content-hashed names, cached for good, and gzip-compressed copies. With DEBUG on, WhiteNoise
# serves the files where they are (the apps' static/ folders and STATICFILES_DIRS).
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "var" / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- Security (production) ------------------------------------------------------------------
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Web hardening: login throttling, Content-Security-Policy, invitations -------------------
# django-axes counts failed logins per username *and* client address, in the database (shared by
# every web process), and refuses that pair for the cool-off once the limit is reached: a guesser
# cannot lock a person out from everywhere. It sees every authenticate() call that carries a
# request, so the login page and the admin's login alike.
INSTALLED_APPS += ["axes"]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("LOOPS_LOGIN_THROTTLING", True)
AXES_FAILURE_LIMIT = env_int("LOOPS_LOGIN_FAILURE_LIMIT", 5)
LOOPS_LOGIN_COOLOFF_MINUTES = env_int("LOOPS_LOGIN_COOLOFF_MINUTES", 15)
AXES_COOLOFF_TIME = LOOPS_LOGIN_COOLOFF_MINUTES / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.throttling.lockout_response"
# Behind N reverse proxies REMOTE_ADDR is the nearest proxy's; the client's address is then the
# Nth from the right of X-Forwarded-For (what the outermost trusted proxy saw). 0: not behind one.
LOOPS_TRUSTED_PROXIES = env_int("LOOPS_TRUSTED_PROXIES", 0)
AXES_CLIENT_IP_CALLABLE = "accounts.throttling.client_ip"

# The API's docs page serves Swagger UI's files from here (django-ninja's bundled static files)
# instead of a CDN, which the policy below would refuse.
INSTALLED_APPS += ["ninja"]

# Django's own CSP. Scripts only from this origin or with the response's nonce (htmx through
# {% htmx_script %}), no eval; nothing embeds these pages. Style sheets and <style> elements
# only from this origin (the Ace editor runs with useStrictCSP); style attributes stay allowed:
# the editor widget, the run chart and the admin set them. A style attribute cannot run code
# or reach another origin here.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "style-src-elem": [CSP.SELF],
    "style-src-attr": [CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}
TEMPLATES[0]["OPTIONS"]["context_processors"].append("django.template.context_processors.csp")
MIDDLEWARE += [
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

# An invitation to an organization is accepted by the invited person within this many days.
LOOPS_INVITATION_DAYS = env_int("LOOPS_INVITATION_DAYS", 7)
# Audit log entries older than this many days are deleted by the workers' clock (0: keep all).
LOOPS_AUDIT_RETENTION_DAYS = env_int("LOOPS_AUDIT_RETENTION_DAYS", 365)
# The invitation link is also e-mailed when the invitation names an address: through SMTP when
# DJANGO_EMAIL_HOST is set, to the web server's output in embedded (DEBUG) mode, else not at all
# (the inviter still gets the link on screen).
_EMAIL_HOST = env_str("DJANGO_EMAIL_HOST", "")
if _EMAIL_HOST:
    MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": _EMAIL_HOST,
                "port": env_int("DJANGO_EMAIL_PORT", 587),
                "username": env_str("DJANGO_EMAIL_USER", ""),
                "password": env_str("DJANGO_EMAIL_PASSWORD", ""),
                "use_tls": env_bool("DJANGO_EMAIL_USE_TLS", True),
            },
        }
    }
elif DEBUG:
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}
LOOPS_INVITATION_EMAILS = bool(_EMAIL_HOST) or DEBUG
DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", "Loops <loops@localhost>")

# --- Request size ---------------------------------------------------------------------------
# A batch of 100,000 small inputs fits; anything larger is answered 413 by the API.
LOOPS_MAX_REQUEST_BYTES = env_int("LOOPS_MAX_REQUEST_BYTES", 25 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = LOOPS_MAX_REQUEST_BYTES

# --- Workers (django-q2) --------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
LOOPS_WORKERS = env_int("LOOPS_WORKERS", 2)
# Runs each worker process executes at once (runs.engine.turns): while an execution's sandbox
# works, its worker thread only waits, and a second one keeps the cores busy. SQLite takes
# one writer at a time: one.
LOOPS_EXECUTIONS_PER_WORKER = env_int(
    "LOOPS_EXECUTIONS_PER_WORKER", 1 if _db["ENGINE"] == "django.db.backends.sqlite3" else 2
)
if LOOPS_EXECUTIONS_PER_WORKER < 1:
    raise ImproperlyConfigured("LOOPS_EXECUTIONS_PER_WORKER must be at least 1")
LOOPS_WALL_SECONDS = env_int("LOOPS_WALL_SECONDS", 60)
# A worker's turn (runs.tasks.work) claims runs one after the other for this long, then hands
# the turn on; its last run may start just before and take its whole wall clock.
LOOPS_TURN_SECONDS = env_int("LOOPS_TURN_SECONDS", 20)
# A running run's lease, renewed every LOOPS_HEARTBEAT_SECONDS by its worker: a run whose
# worker died is queued again once its lease has run out.
LOOPS_LEASE_SECONDS = env_int("LOOPS_LEASE_SECONDS", 15)
LOOPS_HEARTBEAT_SECONDS = env_int("LOOPS_HEARTBEAT_SECONDS", 5)
# A run whose worker has died this many times while running it fails (WorkerLost) instead of
# going back to the queue: a run that kills its worker (by memory, say) must not take one
# worker after another, with the other runs in their hands, for ever.
LOOPS_MAX_LOST_EXECUTIONS = env_int("LOOPS_MAX_LOST_EXECUTIONS", 3)
# The clock of each cluster (runs.clock) looks at what is due at least this often.
LOOPS_CLOCK_SECONDS = env_float("LOOPS_CLOCK_SECONDS", 0.25)
# How long a step's end may wait to be written together with the execution's next write (the
# next step's start, the run's end: one round trip and one commit instead of two), and how soon
# after its claim an execution's first step may start before its start is written (it is
# written with the step's end). A program almost always goes on at once; one that computes
# longer gets each write made alone after this. 0: every write the moment it arrives.
LOOPS_STEP_HOLD_SECONDS = env_float("LOOPS_STEP_HOLD_SECONDS", 0.01)
Q_CLUSTER = {
    "name": "loops",
    # Clusters with the same cluster_name share one queue; another LOOPS_QUEUE isolates one.
    "cluster_name": env_str("LOOPS_QUEUE", "loops"),
    "workers": LOOPS_WORKERS,
    # A turn is bounded by the engine (LOOPS_TURN_SECONDS, then LOOPS_WALL_SECONDS for its last
    # run); this is only the backstop. A turn whose worker died is not worth retrying soon:
    # turns are interchangeable, and the run it held is taken up when its lease runs out.
    "timeout": LOOPS_TURN_SECONDS + LOOPS_WALL_SECONDS + 30,
    "retry": LOOPS_TURN_SECONDS + LOOPS_WALL_SECONDS + 60,
    "max_attempts": 3,
    "save_limit": -1,
    "ack_failures": True,
    "catch_up": False,
    "poll": 0.1,
    "label": "Tasks",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Engine limits --------------------------------------------------------------------------
LOOPS_SANDBOX = env_str("LOOPS_SANDBOX", "auto")  # auto | bwrap | process
# The host user loop code runs as when the worker runs as root (a name or a uid); scripts/dev
# creates it. Never root: see SECURITY.md.
LOOPS_SANDBOX_USER = env_str("LOOPS_SANDBOX_USER", "loops-sandbox")
# RestrictedPython's guards on loop code. Off (0) only to test the OS layers with plain Python;
# `check --deploy` fails while they are off.
LOOPS_PYTHON_GUARDS = env_bool("LOOPS_PYTHON_GUARDS", True)
LOOPS_CPU_SECONDS = env_int("LOOPS_CPU_SECONDS", 10)
LOOPS_MEMORY_MB = env_int("LOOPS_MEMORY_MB", 512)
# Processes per execution. 1: seccomp refuses fork, so every limit of the execution's one
# process is a limit of the execution. More allows forks (up to this many processes), but
# memory and CPU limits then hold per process (SECURITY.md).
LOOPS_MAX_PROCESSES = env_int("LOOPS_MAX_PROCESSES", 1)
LOOPS_ORG_CONCURRENCY_LIMIT = env_int("LOOPS_ORG_CONCURRENCY_LIMIT", 0)  # running, per org; 0: none
LOOPS_MAX_INPUT_BYTES = env_int("LOOPS_MAX_INPUT_BYTES", 1024 * 1024)
LOOPS_MAX_STEP_OUTPUT_BYTES = env_int("LOOPS_MAX_STEP_OUTPUT_BYTES", 8 * 1024 * 1024)
# What run() may return, and everything one run may store (step inputs and outputs, logs,
# its output) over all its executions.
LOOPS_MAX_OUTPUT_BYTES = env_int("LOOPS_MAX_OUTPUT_BYTES", 4 * 1024 * 1024)
LOOPS_MAX_RUN_BYTES = env_int("LOOPS_MAX_RUN_BYTES", 64 * 1024 * 1024)
# One message from an execution to its worker; a step's largest output fits, JSON-escaped.
LOOPS_MAX_MESSAGE_BYTES = env_int(
    "LOOPS_MAX_MESSAGE_BYTES", 2 * LOOPS_MAX_STEP_OUTPUT_BYTES + 1024 * 1024
)
LOOPS_MAX_STEPS_PER_RUN = env_int("LOOPS_MAX_STEPS_PER_RUN", 1000)
LOOPS_MAX_LOG_LINES_PER_RUN = env_int("LOOPS_MAX_LOG_LINES_PER_RUN", 1000)
LOOPS_MAX_WAIT_SECONDS = env_int("LOOPS_MAX_WAIT_SECONDS", 30 * 24 * 3600)
LOOPS_MAX_BATCH_INPUTS = 100_000
# JSON taken in (bodies, inputs, forms) nests at most this deep: deeper values break the
# parser's stack, SQLite's JSON functions and formatted views (loops_project.strict_json).
LOOPS_MAX_JSON_DEPTH = env_int("LOOPS_MAX_JSON_DEPTH", 100)
# Run lists (API and pages) carry an input or output whose JSON is longer than this many
# characters as a preview of that length and a flag; the run itself carries the whole value.
LOOPS_LIST_PREVIEW_CHARS = env_int("LOOPS_LIST_PREVIEW_CHARS", 4096)
# step.run_loop nests at most this many runs below a run started otherwise.
LOOPS_MAX_CHILD_DEPTH = env_int("LOOPS_MAX_CHILD_DEPTH", 10)
LOOPS_HTTP_ALLOW_PRIVATE = env_bool("LOOPS_HTTP_ALLOW_PRIVATE", False)
LOOPS_HTTP_TIMEOUT_SECONDS = env_int("LOOPS_HTTP_TIMEOUT_SECONDS", 30)
LOOPS_HTTP_MAX_RESPONSE_BYTES = env_int("LOOPS_HTTP_MAX_RESPONSE_BYTES", 10 * 1024 * 1024)
LOOPS_LIVE_TIMEOUT_DEFAULT = 30
LOOPS_LIVE_TIMEOUT_MAX = 120
# Live waits at once per organization (runs.live): each holds a web worker while it waits.
LOOPS_LIVE_WAITS_PER_ORG = env_int("LOOPS_LIVE_WAITS_PER_ORG", 4)
LOOPS_API_RATE = env_str("LOOPS_API_RATE", "100000/m")
LOOPS_WEBHOOK_MAX_ATTEMPTS = env_int("LOOPS_WEBHOOK_MAX_ATTEMPTS", 5)
LOOPS_WEBHOOK_RETRY_BASE_SECONDS = env_int("LOOPS_WEBHOOK_RETRY_BASE_SECONDS", 30)
# Threads of each worker cluster that send webhook deliveries (runs.senders).
LOOPS_WEBHOOK_SENDERS = env_int("LOOPS_WEBHOOK_SENDERS", 4)
LOOPS_MAX_WEBHOOKS_PER_ORG = env_int("LOOPS_MAX_WEBHOOKS_PER_ORG", 20)
# Every claim of a run looks at the oldest pending run of each loop (runs.state), so one
# organization's loops, each with a run waiting, would slow every claim of every organization.
LOOPS_MAX_LOOPS_PER_ORG = env_int("LOOPS_MAX_LOOPS_PER_ORG", 200)
# Every schedule due is fired by the clock of its queue; an organization's schedules are
# bounded so that its own do not hold back everyone else's at the top of the minute.
LOOPS_MAX_SCHEDULES_PER_ORG = env_int("LOOPS_MAX_SCHEDULES_PER_ORG", 100)
# A running bulk job holds a worker for a few seconds at a time (runs.bulk): an organization's
# jobs run one at a time by default, so that they leave the other workers to everyone's runs.
LOOPS_MAX_BULK_JOBS_PER_ORG = env_int("LOOPS_MAX_BULK_JOBS_PER_ORG", 1)
# Programs an organization's deploys and test runs may have checked at once (each costs up to a
# few seconds of a web worker's CPU for the largest programs).
LOOPS_COMPILES_PER_ORG = env_int("LOOPS_COMPILES_PER_ORG", 2)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "WARNING")},
}
