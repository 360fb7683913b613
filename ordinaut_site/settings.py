"""Django and Celery settings, read from the environment (12-factor; docs/configuration.md lists every variable)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from ordinaut_site import envfile
from ordinaut_site.queues import queue_config

BASE_DIR = Path(__file__).resolve().parent.parent

# ORDINAUT_ENV_FILE: the settings file read first (ordinaut_site/envfile.py: KEY=VALUE lines; a
# variable set in the environment wins over its line). Unset: `.env` at the checkout's root, which
# `make run` writes (database, Redis, SECRET_KEY, DEBUG), so every later manage.py command finds
# them; empty or "none": no file. A test run (pytest sets PYTEST_VERSION) reads none unless this
# names one, so a developer's .env cannot change test results.
try:
    ENV_FILE = envfile.resolve(
        os.environ.get("ORDINAUT_ENV_FILE"), BASE_DIR / ".env", testing=bool(os.environ.get("PYTEST_VERSION"))
    )
    envfile.load(ENV_FILE, os.environ)
except (OSError, envfile.EnvFileError) as exc:
    raise ImproperlyConfigured(f"cannot read the settings file (ORDINAUT_ENV_FILE): {exc}") from None

VAR_DIR = Path(os.environ.get("ORDINAUT_VAR_DIR", BASE_DIR / "var"))

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


_RATE = re.compile(r"^(off|none|unlimited|0|[1-9]\d*/([1-9]\d*)?(s|sec|second|m|min|minute|h|hour|d|day))$")


def env_rate(name: str, default: str) -> str:
    value = os.environ.get(name, default).strip().lower()
    if not _RATE.match(value):
        raise ImproperlyConfigured(f"{name} must look like 600/min, 20/s, 1000/h, 100/10s or off; got {value!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# --- Core ------------------------------------------------------------------------------------

# DEBUG: development mode (detailed errors in logs, relaxed host checks). Off by default.
DEBUG = env_bool("DEBUG", False)


def dev_secret_key(path: Path) -> str:
    """A random key kept in `path` (mode 0600; the file `make run` also uses), created on first use.
    The admin's sessions are signed with SECRET_KEY, so every process and every restart must agree
    on it: the file is created atomically (link of a complete temporary file), and a process that
    loses the race reads the winner's key. Where the file cannot be kept, a key for this process."""
    with contextlib.suppress(OSError):
        key = path.read_text().strip()
        if key:
            return key
    key = secrets.token_urlsafe(50)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
        return path.read_text().strip() or key
    except OSError as exc:
        warnings.warn(
            f"cannot keep a development SECRET_KEY in {path} ({exc}): sessions end with this process", stacklevel=1
        )
        return key


# SECRET_KEY: signs sessions and admin cookies. Required when DEBUG is off; with DEBUG, a random key
# generated once and kept in var/secret_key.
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY in the environment (any long random string, e.g. "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(50))'`), or set DEBUG=1 for a "
            "development-only default. `make run` writes one to .env at the checkout's root, which every "
            "command run from the checkout reads."
        )
    SECRET_KEY = dev_secret_key(VAR_DIR / "secret_key")
    warnings.warn(
        f"SECRET_KEY is not set: using an INSECURE development key generated in {VAR_DIR / 'secret_key'}. "
        "Never run like this in production.",
        stacklevel=1,
    )

# ALLOWED_HOSTS: comma-separated host names the web process answers for.
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
# CSRF_TRUSTED_ORIGINS: comma-separated origins (scheme://host:port) allowed to post admin forms.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_prometheus",
    "ordinaut_site.apps.OrdinautConfig",
    "tasks",
    "runs",
    "pipelines",
]

# RequestIdMiddleware first: every response, whichever layer produced it, carries X-Request-ID.
MIDDLEWARE = [
    "ordinaut_site.middleware.RequestIdMiddleware",
    "ordinaut_site.middleware.ErrorShapeMiddleware",
    "ordinaut_site.middleware.RequestLimitsMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "ordinaut_site.urls"
WSGI_APPLICATION = "ordinaut_site.wsgi.application"
ASGI_APPLICATION = "ordinaut_site.asgi.application"
# The API accepts paths with or without a trailing slash itself; no redirects.
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------------------------

# DATABASE_URL: postgres://user:pass@host:5432/name for production and tests; defaults to an
# embedded SQLite file under var/ for the single-machine quick start.
DEFAULT_DATABASE_URL = f"sqlite:///{VAR_DIR / 'ordinaut.sqlite3'}"
DATABASE_URL = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if _db["ENGINE"] == "django.db.backends.postgresql":
    _db.setdefault("OPTIONS", {})
    _db["CONN_HEALTH_CHECKS"] = True
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # Several processes (web, worker, beat) share one file: WAL lets readers run beside a
    # writer, IMMEDIATE transactions take the write lock up front instead of failing mid-way,
    # and the timeout makes writers queue rather than raise "database is locked".
    _db["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _db["CONN_MAX_AGE"] = 0
else:
    raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL or SQLite.")
_db["TEST"] = {"NAME": os.environ.get("TEST_DATABASE_NAME") or None}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Time, language, static ------------------------------------------------------------------

# TIME_ZONE: default IANA timezone for tasks that do not name one; storage is always UTC.
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_TZ = True
LANGUAGE_CODE = "en-us"
USE_I18N = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
# WhiteNoise warns on every start when the folder is missing (before collectstatic).
with contextlib.suppress(OSError):
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve static files straight from the apps when collectstatic has not run (quick start).
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- Security --------------------------------------------------------------------------------

# SECURE_SSL: set when served over HTTPS (secure cookies, HSTS, redirect to https).
SECURE_SSL = env_bool("SECURE_SSL", False)
SESSION_COOKIE_SECURE = SECURE_SSL
CSRF_COOKIE_SECURE = SECURE_SSL
SECURE_SSL_REDIRECT = SECURE_SSL
# Health probes and Prometheus reach /health* and /metrics over plain http from inside the network,
# not through the TLS proxy: those are answered, not redirected to https (deploy/, docs/operations.md).
SECURE_REDIRECT_EXEMPT = [r"^health(/|$)", r"^metrics/?$"]
SECURE_HSTS_SECONDS = 31536000 if SECURE_SSL else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_SSL
SECURE_HSTS_PRELOAD = SECURE_SSL
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SECURE_SSL else None
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = [] if SECURE_SSL else ["security.W004", "security.W008", "security.W012", "security.W016"]
# ORDINAUT_MAX_BODY_BYTES: largest request body accepted by the API (bytes).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("ORDINAUT_MAX_BODY_BYTES", 1_048_576)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Redis, cache ----------------------------------------------------------------------------

# REDIS_URL: Celery broker, event stream, cache (rate limits) and beat's leader lock.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "ordinaut",
        "TIMEOUT": 300,
    }
}

# --- Celery (namespace CELERY_) --------------------------------------------------------------

# ORDINAUT_MAX_STEP_TIMEOUT_S: upper bound for any step's timeout_seconds.
ORDINAUT_MAX_STEP_TIMEOUT_S = env_int("ORDINAUT_MAX_STEP_TIMEOUT_S", 3600)
# ORDINAUT_MAX_COUNTDOWN_S: upper bound for any retry backoff, wait or run jitter countdown kept in
# the broker; longer waits and jitters are parked in the database and dispatched by the sweeper.
ORDINAUT_MAX_COUNTDOWN_S = env_int("ORDINAUT_MAX_COUNTDOWN_S", 900)
# ORDINAUT_HARD_TIME_LIMIT_GRACE_S: a step job's hard time limit is this much above its timeout (the
# soft limit): the soft limit lets the tool fail cleanly, the hard one kills a tool that ignores it.
ORDINAUT_HARD_TIME_LIMIT_GRACE_S = env_int("ORDINAUT_HARD_TIME_LIMIT_GRACE_S", 30)
# The Redis transport re-delivers an unacknowledged message after the visibility timeout. It must
# exceed the longest a message can legitimately stay unacknowledged (waiting out a countdown, then
# a step running up to its hard time limit), or a live step would run twice. Every countdown the
# broker gets (retry backoff, short wait, run jitter) is at most ORDINAUT_MAX_COUNTDOWN_S; longer
# ones are held in the database.
CELERY_VISIBILITY_TIMEOUT_S = env_int(
    "CELERY_VISIBILITY_TIMEOUT_S", ORDINAUT_MAX_STEP_TIMEOUT_S + ORDINAUT_MAX_COUNTDOWN_S + 600
)
if CELERY_VISIBILITY_TIMEOUT_S <= (
    ORDINAUT_MAX_STEP_TIMEOUT_S + ORDINAUT_HARD_TIME_LIMIT_GRACE_S + ORDINAUT_MAX_COUNTDOWN_S
):
    raise ImproperlyConfigured(
        f"CELERY_VISIBILITY_TIMEOUT_S must be larger than ORDINAUT_MAX_STEP_TIMEOUT_S + "
        f"{ORDINAUT_HARD_TIME_LIMIT_GRACE_S} (the hard time limit's grace) + ORDINAUT_MAX_COUNTDOWN_S"
    )

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# queue_order_strategy=priority: workers read the queues in the order of CELERY_TASK_QUEUES.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT_S,
    "queue_order_strategy": "priority",
}
# CELERY_QUEUE: the default queue; the scheduler's jobs use "<CELERY_QUEUE>.schedule", read first.
_queues = queue_config(os.environ.get("CELERY_QUEUE", "ordinaut"))
CELERY_TASK_DEFAULT_QUEUE = _queues["task_default_queue"]
CELERY_TASK_DEFAULT_EXCHANGE = _queues["task_default_exchange"]
CELERY_TASK_DEFAULT_ROUTING_KEY = _queues["task_default_routing_key"]
CELERY_TASK_QUEUES = _queues["task_queues"]
CELERY_TASK_ROUTES = _queues["task_routes"]
# At-least-once: acknowledge after the job ran, take one message at a time, and put a message
# back when the worker process running it dies. Steps are idempotent at the record level.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# State lives in Postgres; a Celery message is only a nudge, so no result backend.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = True
# Workers report received/started/succeeded to Flower; a "sent" event per published job would
# double the cost of every publish (each run publishes its chain) for a state Flower can skip.
CELERY_TASK_SEND_SENT_EVENT = False
# Ordinaut's DatabaseScheduler subclass (tasks/scheduler.py): plain `celery -A ordinaut_site beat` uses it.
CELERY_BEAT_SCHEDULER = "tasks.scheduler:OrdinautScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = 1
# ORDINAUT_BEAT_LOCK_TTL_S: beat's Redis leader lock lifetime; a standby beat takes over within it.
ORDINAUT_BEAT_LOCK_TTL_S = env_int("ORDINAUT_BEAT_LOCK_TTL_S", 10)
# ORDINAUT_BEAT_CHANGE_MARKER: also bump django-celery-beat's change marker (its PeriodicTasks row), once
# after each commit that writes task beat rows, for django-celery-beat's stock DatabaseScheduler, which
# reloads when it moves. Ordinaut's scheduler follows PeriodicTask.date_changed and does not read it.
ORDINAUT_BEAT_CHANGE_MARKER = env_bool("ORDINAUT_BEAT_CHANGE_MARKER", False)
# ORDINAUT_MISSED_GRACE_S: an occurrence this late still runs even if the task's catch-up window is smaller.
ORDINAUT_MISSED_GRACE_S = env_int("ORDINAUT_MISSED_GRACE_S", 30)
# WORKER_CONCURRENCY: worker processes per `celery worker` (prefork).
CELERY_WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 2)

# --- Ordinaut --------------------------------------------------------------------------------

# ORDINAUT_BUDGET_TOOL_CALLS_PER_DAY: metered tool calls per agent per UTC day (0: no limit).
ORDINAUT_BUDGET_TOOL_CALLS_PER_DAY = env_int("ORDINAUT_BUDGET_TOOL_CALLS_PER_DAY", 10_000)
# ORDINAUT_BUDGET_COST_UNITS_PER_DAY: tool cost units per agent per UTC day (0: no limit).
ORDINAUT_BUDGET_COST_UNITS_PER_DAY = env_int("ORDINAUT_BUDGET_COST_UNITS_PER_DAY", 10_000)
# ORDINAUT_MAX_STEPS: most steps a pipeline may have.
ORDINAUT_MAX_STEPS = env_int("ORDINAUT_MAX_STEPS", 50)
# ORDINAUT_MAX_PAYLOAD_BYTES: largest task payload (params + pipeline) as compact JSON.
ORDINAUT_MAX_PAYLOAD_BYTES = env_int("ORDINAUT_MAX_PAYLOAD_BYTES", 262_144)
# ORDINAUT_DEFAULT_STEP_TIMEOUT_S: step timeout when neither step nor task sets one.
ORDINAUT_DEFAULT_STEP_TIMEOUT_S = env_int("ORDINAUT_DEFAULT_STEP_TIMEOUT_S", 300)
# ORDINAUT_MAX_RENDERED_BYTES: largest rendered step input (templates expanded), as compact JSON.
ORDINAUT_MAX_RENDERED_BYTES = env_int("ORDINAUT_MAX_RENDERED_BYTES", 1_048_576)
# ORDINAUT_EXPR_MAX_STEPS: most JMESPath nodes one evaluation may visit (a template, an `if`, a task
# condition, a transform; the templates of one step's `with` share one allowance).
ORDINAUT_EXPR_MAX_STEPS = env_int("ORDINAUT_EXPR_MAX_STEPS", 100_000)
# ORDINAUT_EXPR_MAX_ITEMS: most list elements and object keys one evaluation may build, and the
# largest value it may build counted as written out (a value used twice counts twice; a string one
# item per 64 characters). Over either budget: error expression_too_expensive.
ORDINAUT_EXPR_MAX_ITEMS = env_int("ORDINAUT_EXPR_MAX_ITEMS", 100_000)
# ORDINAUT_MAX_FOREACH_ITEMS: most items one `foreach` step may run its tool for (a longer literal list
# is refused at create; a longer computed list fails the step with foreach_too_many_items).
ORDINAUT_MAX_FOREACH_ITEMS = env_int("ORDINAUT_MAX_FOREACH_ITEMS", 1000)
# ORDINAUT_MAX_PARALLEL: the largest `max_parallel` a foreach step may ask for (items running at once).
ORDINAUT_MAX_PARALLEL = env_int("ORDINAUT_MAX_PARALLEL", 32)
# ORDINAUT_MAX_STEP_OUTPUT_BYTES: largest tool output stored for a step, as compact JSON.
ORDINAUT_MAX_STEP_OUTPUT_BYTES = env_int("ORDINAUT_MAX_STEP_OUTPUT_BYTES", 1_048_576)
# ORDINAUT_TOOL_MODULES: comma-separated Python modules imported on first tool lookup (they register tools).
ORDINAUT_TOOL_MODULES = env_list("ORDINAUT_TOOL_MODULES", [])
# ORDINAUT_HTTP_ALLOWED_HOSTS: hosts orchestrator.http may call (`api.example.com`, `*.example.com`,
# `127.0.0.1:8080`); empty: none.
ORDINAUT_HTTP_ALLOWED_HOSTS = env_list("ORDINAUT_HTTP_ALLOWED_HOSTS", [])
# ORDINAUT_ALLOWED_PRIVATE_NETWORKS: comma-separated networks (CIDR: `10.0.0.0/8`, `127.0.0.1/32`,
# `fd00::/8`) tool servers and orchestrator.http may reach although they are loopback, private,
# link-local or otherwise non-public; every other such address is refused (pipelines/netpolicy.py).
ORDINAUT_ALLOWED_PRIVATE_NETWORKS = env_list("ORDINAUT_ALLOWED_PRIVATE_NETWORKS", [])
# ORDINAUT_HTTP_MAX_RESPONSE_BYTES: largest response body orchestrator.http reads.
ORDINAUT_HTTP_MAX_RESPONSE_BYTES = env_int("ORDINAUT_HTTP_MAX_RESPONSE_BYTES", 1_048_576)
# ORDINAUT_TOOL_CACHE_TTL_S: how long a process reuses a catalog (MCP) tool it looked up.
ORDINAUT_TOOL_CACHE_TTL_S = env_int("ORDINAUT_TOOL_CACHE_TTL_S", 30)
# ORDINAUT_TOOL_REFRESH_INTERVAL_S: how often beat refreshes every enabled tool server's catalog.
ORDINAUT_TOOL_REFRESH_INTERVAL_S = env_int("ORDINAUT_TOOL_REFRESH_INTERVAL_S", 3600)
# ORDINAUT_TOOL_HEADER_ENV_PREFIX: servers registered through the API may send headers only from
# environment variables whose names start with this (operators' servers may name any variable).
ORDINAUT_TOOL_HEADER_ENV_PREFIX = os.environ.get("ORDINAUT_TOOL_HEADER_ENV_PREFIX", "MCP_")
# ORDINAUT_APPROVAL_TIMEOUT_S: how long an approval waits when the step sets no timeout_seconds.
ORDINAUT_APPROVAL_TIMEOUT_S = env_int("ORDINAUT_APPROVAL_TIMEOUT_S", 7 * 86400)
# ORDINAUT_DISPATCH_LEAD_S: beat fires an occurrence up to this many seconds before its instant: the
# run is created (status scheduled) and its first step sent with an ETA at the instant, so a burst of
# occurrences on one second starts on time. Pause, snooze, deletion, condition and overlap are still
# decided at the instant, when that step starts. 0: fire at the instant.
ORDINAUT_DISPATCH_LEAD_S = env_int("ORDINAUT_DISPATCH_LEAD_S", 2)
# ORDINAUT_QUEUED_GRACE_S: how long a queued run may wait for its first step before the sweeper re-sends it.
ORDINAUT_QUEUED_GRACE_S = env_int("ORDINAUT_QUEUED_GRACE_S", 300)
# ORDINAUT_RUNNING_GRACE_S: added to a step's timeout (and retry delay) before the sweeper calls it lost.
ORDINAUT_RUNNING_GRACE_S = env_int("ORDINAUT_RUNNING_GRACE_S", 120)
# ORDINAUT_SWEEP_INTERVAL_S: how often beat runs the recovery sweeper (stuck runs, parked waits, approvals).
ORDINAUT_SWEEP_INTERVAL_S = env_int("ORDINAUT_SWEEP_INTERVAL_S", 30)
# ORDINAUT_WORKER_HEARTBEAT_S: how often each worker's main process renews its liveness key in Redis.
ORDINAUT_WORKER_HEARTBEAT_S = env_int("ORDINAUT_WORKER_HEARTBEAT_S", 5)
# ORDINAUT_WORKER_DEAD_AFTER_S: a worker whose liveness key was not renewed for this long is dead: the
# sweeper re-runs the steps it had in flight (at its next pass, every ORDINAUT_SWEEP_INTERVAL_S).
ORDINAUT_WORKER_DEAD_AFTER_S = env_int("ORDINAUT_WORKER_DEAD_AFTER_S", 20)
if ORDINAUT_WORKER_DEAD_AFTER_S < 2 * ORDINAUT_WORKER_HEARTBEAT_S:
    raise ImproperlyConfigured(
        "ORDINAUT_WORKER_DEAD_AFTER_S must be at least twice ORDINAUT_WORKER_HEARTBEAT_S, "
        "or one late beat kills a worker"
    )
# ORDINAUT_FIRE_SOFT_TIME_LIMIT_S: a fire job (tasks.fire_batch, tasks.fire, tasks.record_missed) or one
# event delivery of the events consumer running longer is interrupted; a batch is then fired again
# one occurrence per job, so one slow task cannot hold up the others.
ORDINAUT_FIRE_SOFT_TIME_LIMIT_S = env_int("ORDINAUT_FIRE_SOFT_TIME_LIMIT_S", 30)
# ORDINAUT_FIRE_TIME_LIMIT_S: the hard limit behind it: the worker's pool process (or the events
# consumer process) is killed, and its occurrences (entries) are fired again one by one.
ORDINAUT_FIRE_TIME_LIMIT_S = env_int("ORDINAUT_FIRE_TIME_LIMIT_S", 60)
if ORDINAUT_FIRE_TIME_LIMIT_S <= ORDINAUT_FIRE_SOFT_TIME_LIMIT_S:
    raise ImproperlyConfigured("ORDINAUT_FIRE_TIME_LIMIT_S must be larger than ORDINAUT_FIRE_SOFT_TIME_LIMIT_S")
# --- Events (POST /events, orchestrator.emit_event, `manage.py consume_events`) ---
# ORDINAUT_EVENT_STREAM: the Redis stream events are added to (on REDIS_URL).
ORDINAUT_EVENT_STREAM = os.environ.get("ORDINAUT_EVENT_STREAM", "ordinaut:events")
# ORDINAUT_EVENT_STREAM_MAXLEN: the stream is capped near this many entries (XADD MAXLEN ~).
ORDINAUT_EVENT_STREAM_MAXLEN = env_int("ORDINAUT_EVENT_STREAM_MAXLEN", 100_000)
# ORDINAUT_EVENT_GROUP: the consumer group the events consumers read the stream in.
ORDINAUT_EVENT_GROUP = os.environ.get("ORDINAUT_EVENT_GROUP", "ordinaut-events")
# ORDINAUT_EVENT_CLAIM_IDLE_S: entries a consumer read but did not acknowledge for this long (it
# died) are claimed by another consumer (XAUTOCLAIM).
ORDINAUT_EVENT_CLAIM_IDLE_S = env_int("ORDINAUT_EVENT_CLAIM_IDLE_S", 60)
# ORDINAUT_EVENT_BATCH: entries a consumer reads at once.
ORDINAUT_EVENT_BATCH = env_int("ORDINAUT_EVENT_BATCH", 100)
# ORDINAUT_EVENT_REPUBLISH_AFTER_S: an event still off the stream after this long (Redis was down
# when it was published) is added by the events consumer.
ORDINAUT_EVENT_REPUBLISH_AFTER_S = env_int("ORDINAUT_EVENT_REPUBLISH_AFTER_S", 30)
# ORDINAUT_EVENT_MAX_HOPS: how many events in a row steps may emit (a task emitting the topic it
# listens to stops there).
ORDINAUT_EVENT_MAX_HOPS = env_int("ORDINAUT_EVENT_MAX_HOPS", 8)
# ORDINAUT_EVENT_MAX_PAYLOAD_BYTES: largest event payload (compact JSON).
ORDINAUT_EVENT_MAX_PAYLOAD_BYTES = env_int("ORDINAUT_EVENT_MAX_PAYLOAD_BYTES", 262_144)
# Celery's Django fixup closes the database connection around every job unless this is set;
# reconnecting costs more than a short job. Jobs run Django's close_old_connections() instead
# (ordinaut_site/jobs.py), which honours DB_CONN_MAX_AGE and drops broken connections.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
# ORDINAUT_RUN_RETENTION_DAYS: finished runs (with their steps and approvals) older than this are
# deleted daily, each task's newest run kept; 0 keeps every run. The audit log is never purged.
ORDINAUT_RUN_RETENTION_DAYS = env_int("ORDINAUT_RUN_RETENTION_DAYS", 90)
# ORDINAUT_EVENT_RETENTION_DAYS: consumed events older than this are deleted daily (their runs keep
# a copy of the event in their context); events not consumed yet are kept. 0 keeps every event.
ORDINAUT_EVENT_RETENTION_DAYS = env_int("ORDINAUT_EVENT_RETENTION_DAYS", 90)
# --- Metrics (docs/operations.md, "Metrics, logs, Flower"); the web serves them at /metrics ---
# ORDINAUT_METRICS_HOST: the address the worker, beat and events processes serve their metrics on;
# 0.0.0.0 (or the host's own address) when Prometheus scrapes them from another host.
ORDINAUT_METRICS_HOST = os.environ.get("ORDINAUT_METRICS_HOST", "127.0.0.1")
# ORDINAUT_METRICS_PORT_WORKER: the port of a worker's metrics (its pool processes' series
# included); give each worker of a host its own. 0: none.
ORDINAUT_METRICS_PORT_WORKER = env_int("ORDINAUT_METRICS_PORT_WORKER", 9810)
# ORDINAUT_METRICS_PORT_BEAT: the port of beat's metrics (its leadership, ticks, send lateness). 0: none.
ORDINAUT_METRICS_PORT_BEAT = env_int("ORDINAUT_METRICS_PORT_BEAT", 9811)
# ORDINAUT_METRICS_PORT_EVENTS: the port of the events consumer's metrics. 0: none.
ORDINAUT_METRICS_PORT_EVENTS = env_int("ORDINAUT_METRICS_PORT_EVENTS", 9812)
# django-celery-beat copies these entries into its tables when beat starts.
CELERY_BEAT_SCHEDULE = {
    "ordinaut.sweep_runs": {
        "task": "runs.sweep",
        "schedule": float(ORDINAUT_SWEEP_INTERVAL_S),
        # A sweep that could not start within one interval is superseded by the next one.
        "options": {"expire_seconds": ORDINAUT_SWEEP_INTERVAL_S},
    },
    # Finished runs past ORDINAUT_RUN_RETENTION_DAYS; manage.py purge_runs does the same.
    "ordinaut.purge_runs": {"task": "runs.purge", "schedule": 86400.0},
    # Consumed events past ORDINAUT_EVENT_RETENTION_DAYS.
    "ordinaut.purge_events": {"task": "tasks.purge_events", "schedule": 86400.0},
    # Expired Idempotency-Key records (ORDINAUT_IDEMPOTENCY_TTL_S); manage.py purge_idempotency_keys does the same.
    "ordinaut.purge_idempotency_keys": {"task": "ordinaut.purge_idempotency_keys", "schedule": 3600.0},
    # Every enabled tool server's catalog (tools/list); manage.py refresh_tools does it by hand.
    "ordinaut.refresh_tool_servers": {
        "task": "pipelines.refresh_tool_servers",
        "schedule": float(ORDINAUT_TOOL_REFRESH_INTERVAL_S),
        "options": {"expire_seconds": ORDINAUT_TOOL_REFRESH_INTERVAL_S},
    },
}

# --- REST framework --------------------------------------------------------------------------

# ORDINAUT_RATE_LIMIT: requests per agent (all methods), e.g. 600/min, 20/s, 100/10s; "off" disables.
ORDINAUT_RATE_LIMIT = env_rate("ORDINAUT_RATE_LIMIT", "600/min")
# ORDINAUT_WRITE_RATE_LIMIT: POST/PATCH/PUT/DELETE per agent, counted on top of ORDINAUT_RATE_LIMIT.
ORDINAUT_WRITE_RATE_LIMIT = env_rate("ORDINAUT_WRITE_RATE_LIMIT", "300/min")
# ORDINAUT_ANON_RATE_LIMIT: requests per client IP without a valid token (/openapi.json, /docs, and
# every API request refused with 401, which gets 429 once the limit is spent).
ORDINAUT_ANON_RATE_LIMIT = env_rate("ORDINAUT_ANON_RATE_LIMIT", "120/min")
# ORDINAUT_IDEMPOTENCY_TTL_S: how long an Idempotency-Key and its response are remembered.
ORDINAUT_IDEMPOTENCY_TTL_S = env_int("ORDINAUT_IDEMPOTENCY_TTL_S", 86400)
# ORDINAUT_MAX_JSON_DEPTH: deepest nesting of arrays/objects accepted in a request body.
ORDINAUT_MAX_JSON_DEPTH = env_int("ORDINAUT_MAX_JSON_DEPTH", 64)
# ORDINAUT_MAX_JSON_STRING_CHARS: longest string (or object key) accepted in a request body.
ORDINAUT_MAX_JSON_STRING_CHARS = env_int("ORDINAUT_MAX_JSON_STRING_CHARS", 100_000)
# ORDINAUT_MAX_JSON_ITEMS: most items in one array or object of a request body.
ORDINAUT_MAX_JSON_ITEMS = env_int("ORDINAUT_MAX_JSON_ITEMS", 10_000)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["ordinaut_site.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["ordinaut_site.auth.HasScope"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["ordinaut_site.parsers.JSONParser"],
    "DEFAULT_THROTTLE_CLASSES": [
        "ordinaut_site.throttling.AgentRateThrottle",
        "ordinaut_site.throttling.AgentWriteRateThrottle",
    ],
    "DEFAULT_SCHEMA_CLASS": "ordinaut_site.schema.AutoSchema",
    "EXCEPTION_HANDLER": "ordinaut_site.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_PAGINATION_CLASS": "ordinaut_site.api.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    # APIClient in tests posts JSON unless told otherwise (the API accepts nothing else).
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

# OpenAPI at /openapi.json, Swagger UI at /docs with assets served from this server (sidecar).
SPECTACULAR_SETTINGS = {
    "TITLE": "Ordinaut API",
    "DESCRIPTION": "Tasks, schedules, runs and pipelines for AI agents. Authenticate with `Authorization: Bearer "
    "<agent token>`. Every error has the shape {error: {code, message, fields?}, request_id}.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "persistAuthorization": True, "validatorUrl": None},
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a `status` with its own choices: name each enum after its model.
    "ENUM_NAME_OVERRIDES": {
        "TaskStatusEnum": "tasks.models.Task.Status",
        "RunStatusEnum": "runs.models.Run.Status",
        "StepRunStatusEnum": "runs.models.StepRun.Status",
        "ApprovalStatusEnum": "runs.models.Approval.Status",
    },
    "PREPROCESSING_HOOKS": ["ordinaut_site.schema.strip_trailing_slashes"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "ordinaut_site.schema.shared_headers",
        "ordinaut_site.schema.empty_query_values",
    ],
}

# --- Logging ---------------------------------------------------------------------------------

# LOG_LEVEL: DEBUG, INFO, WARNING, ERROR.
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
# LOG_FORMAT: "json" (one JSON object per line, with request/run correlation) or "text".
LOG_FORMAT = os.environ.get("LOG_FORMAT", "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "ordinaut_site.logs.ContextFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": sys.stderr,
            "filters": ["context"],
            "formatter": "json" if LOG_FORMAT == "json" else "text",
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "httpx2": {"level": "WARNING"},
        "mcp": {"level": "WARNING"},
    },
}
