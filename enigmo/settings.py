"""Settings, read from the environment in one place; a bad value stops the process at start."""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(name: str, default: bool) -> bool:
    """A strict boolean: django-environ reads any unknown word ("ture") as False, we refuse it."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def _int(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ImproperlyConfigured(f"{name} must be {kind}, got {value}")
    return value


def _positive_int(name: str, default: int) -> int:
    return _int(name, default, minimum=1)


def _optional_positive_int(name: str) -> int | None:
    """Unset or empty means "choose for me"; anything given must be a positive integer."""
    if not os.environ.get(name, "").strip():
        return None
    return _positive_int(name, 0)


def _positive_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ImproperlyConfigured(f"{name} must be a positive number, got {raw!r}")
    return value


DEBUG = _bool("ENIGMO_DEBUG", False)
PRODUCTION = _bool("ENIGMO_PRODUCTION", False)
SECRET_KEY = env.str("ENIGMO_SECRET_KEY", default="")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("ENIGMO_SECRET_KEY must be set when ENIGMO_PRODUCTION=1")
    SECRET_KEY = "enigmo-insecure-development-key-not-for-production-use-0123456789"
ALLOWED_HOSTS = env.list("ENIGMO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
# Origins a browser WebSocket handshake may come from (Channels' OriginValidator patterns).
WS_ALLOWED_ORIGINS = env.list(
    "ENIGMO_WS_ALLOWED_ORIGINS",
    default=["http://127.0.0.1:8000", "http://localhost:8000"],
)
CSRF_TRUSTED_ORIGINS = env.list("ENIGMO_CSRF_TRUSTED_ORIGINS", default=WS_ALLOWED_ORIGINS)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "keys",
    "messaging",
    "enigmo.compat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "enigmo.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "enigmo.urls"
ASGI_APPLICATION = "enigmo.asgi.application"
WSGI_APPLICATION = None

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
            ],
        },
    },
]

# --- Database: SQLite by default, PostgreSQL when DATABASE_URL says so -------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions serialise writers up front instead of failing on lock upgrade.
    _db["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 30, "init_command": "PRAGMA journal_mode=WAL;"}
    # One test database per process, so concurrent test runs never share a file.
    _db["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test-db-{os.getpid()}.sqlite3")}
elif _db["ENGINE"] in ("django.db.backends.postgresql",):
    # No persistent connections for requests (Django's advice under ASGI): every HTTP request
    # runs in a thread of its own, so a connection kept for reuse is never reused; it stays open
    # until that dead thread is collected, and a burst of requests ran PostgreSQL out of
    # connections (measured: 77 idle after 1,000 REST sends). The relay's database threads live
    # as long as the process and keep theirs between their 5-second clean-ups.
    _db.setdefault("CONN_MAX_AGE", 0)
    _db.setdefault("CONN_HEALTH_CHECKS", True)
    _db.setdefault("OPTIONS", {})["connect_timeout"] = 5
    # The relay's group-commit statements (messaging.services._bound_cursor, server-side
    # binding) are prepared on first use and planned once: planning them for every group commit
    # was most of PostgreSQL's CPU at low rates, where a batch holds one or two envelopes
    # (measured, see docs/performance.md). Django's own queries use client-side binding, which
    # never prepares.
    # Off (Django's default) behind a pooler that cannot keep them, e.g. PgBouncer in
    # transaction mode before 1.21.
    if _bool("ENIGMO_DB_PREPARED_STATEMENTS", True):
        _db["OPTIONS"].setdefault("prepare_threshold", 0)
    _db["TEST"] = {"NAME": f"test_enigmo_{os.getpid()}"}
else:
    raise ImproperlyConfigured(f"DATABASE_URL must be sqlite or postgres, got {_db['ENGINE']}")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer, cache (rate limits) and Celery broker --------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://")):
    raise ImproperlyConfigured(f"REDIS_URL must start with redis:// or rediss://, got {REDIS_URL!r}")

# Namespaces this deployment's keys in Redis (cache, rate limits, channel layer); test runs use
# one per process so concurrent runs on one Redis never see each other.
REDIS_KEY_PREFIX = env.str("ENIGMO_REDIS_PREFIX", default="enigmo")
# Messages the channel layer holds for a receiver; above it nudges are dropped, which only
# delays delivery (the socket's next read of the database catches up). channels-redis counts
# all socket channels of one server process together; the in-memory layer counts each channel.
CHANNEL_CAPACITY = _positive_int("ENIGMO_CHANNEL_CAPACITY", 1000)
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # One explicit pool per layer with a hard cap and timeouts, so a burst cannot
                # exhaust Redis connections (BRIEF §6); the channel layer only nudges.
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "max_connections": _positive_int("ENIGMO_REDIS_LAYER_POOL", 64),
                        # Longer than channels-redis's 5 s blocking reads, so an idle receive
                        # never times out the socket under it.
                        "socket_timeout": 30,
                        "socket_connect_timeout": 5,
                        "retry_on_timeout": True,
                    }
                ],
                "prefix": f"{REDIS_KEY_PREFIX}:asgi",
                "capacity": CHANNEL_CAPACITY,
                "expiry": 30,
                "group_expiry": 86400,
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_KEY_PREFIX,
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
    }
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
    CELERY_TASK_ALWAYS_EAGER = False
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": CHANNEL_CAPACITY, "expiry": 30}}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "enigmo"}}
    CELERY_BROKER_URL = "memory://"
    # Embedded default: no broker; the periodic purge runs in-process (enigmo.embedded).
    CELERY_TASK_ALWAYS_EAGER = True

CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
PURGE_INTERVAL_SECONDS = _positive_int("ENIGMO_PURGE_INTERVAL_SECONDS", 15)
CELERY_BEAT_SCHEDULE = {
    "purge-expired": {"task": "messaging.tasks.purge_expired", "schedule": PURGE_INTERVAL_SECONDS},
}
EMBEDDED_PURGE = _bool("ENIGMO_EMBEDDED_PURGE", not REDIS_URL)

# --- Auth ---------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CHALLENGE_TTL_SECONDS = _positive_int("ENIGMO_CHALLENGE_TTL_SECONDS", 300)
MAX_DEVICES_PER_ACCOUNT = _positive_int("ENIGMO_MAX_DEVICES", 6)

# --- Limits (BRIEF §5) --------------------------------------------------------------------
MAX_CIPHERTEXT_BYTES = _positive_int("ENIGMO_MAX_CIPHERTEXT_BYTES", 96 * 1024)
MAX_WS_FRAME_BYTES = _positive_int("ENIGMO_MAX_WS_FRAME_BYTES", 512 * 1024)
MAX_MEDIA_BYTES = _positive_int("ENIGMO_MAX_MEDIA_BYTES", 25 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = _positive_int("ENIGMO_MAX_BODY_BYTES", 2 * 1024 * 1024)
# WebSocket keepalive and lifetime (daphne options, see enigmo/serve.py): a silent peer is dropped
# within interval + timeout; a socket older than WS_MAX_AGE_SECONDS is closed and the client reconnects.
WS_PING_INTERVAL_SECONDS = _positive_int("ENIGMO_WS_PING_INTERVAL", 20)
WS_PING_TIMEOUT_SECONDS = _positive_int("ENIGMO_WS_PING_TIMEOUT", 30)
WS_MAX_AGE_SECONDS = _positive_int("ENIGMO_WS_MAX_AGE", 86400)
# Frames one socket may send: "burst/seconds per frame" (GCRA); above it → error frame, close 1008.
WS_FRAME_RATE = env.str("ENIGMO_WS_FRAME_RATE", default="2000/0.005")
MEDIA_ROOT = Path(env.str("ENIGMO_MEDIA_ROOT", default=str(BASE_DIR / "var" / "media")))
RATE_LIMITS_ENABLED = _bool("ENIGMO_RATE_LIMITS", True)

# --- Static files: our ES modules plus npm packages (libsodium) under /static/npm/ --------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static", ("npm", BASE_DIR / "node_modules")]
WHITENOISE_USE_FINDERS = True
WHITENOISE_MIMETYPES = {".mjs": "text/javascript", ".wasm": "application/wasm"}

# --- REST framework and OpenAPI -----------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "keys.authentication.DeviceTokenAuthentication",
        "keys.authentication.DeviceSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["keys.authentication.IsDeviceAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["enigmo.parsers.CappedJSONParser"],
    "EXCEPTION_HANDLER": "enigmo.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "enigmo.schema.EnigmoAutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Enigmo API",
    "DESCRIPTION": "End-to-end encrypted messaging. The server stores public keys and opaque ciphertext only.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "enigmo.schema.add_error_responses"],
}

# --- Security headers ---------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    SECURE_HSTS_SECONDS = _int("ENIGMO_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_SSL_REDIRECT = _bool("ENIGMO_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("ENIGMO_LOG_LEVEL", default="INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
CSRF_FAILURE_VIEW = "enigmo.middleware.csrf_failure"

# GCRA buckets "burst/seconds-per-token" (BRIEF §5; Signal's prekey limit is 6 then 1 per 10 min).
RATE_LIMITS = {
    "bundle": env.str("ENIGMO_RL_BUNDLE", default="6/600"),
    "login_ip": env.str("ENIGMO_RL_LOGIN_IP", default="30/2"),
    "login_account": env.str("ENIGMO_RL_LOGIN_ACCOUNT", default="10/6"),
    "register_ip": env.str("ENIGMO_RL_REGISTER_IP", default="20/30"),
    "register_account": env.str("ENIGMO_RL_REGISTER_ACCOUNT", default="5/60"),
    "challenge_ip": env.str("ENIGMO_RL_CHALLENGE_IP", default="60/1"),
    "message": env.str("ENIGMO_RL_MESSAGE", default="60/1"),
    "media": env.str("ENIGMO_RL_MEDIA", default="30/2"),
    "link": env.str("ENIGMO_RL_LINK", default="10/30"),
}
for _name, _spec in [*RATE_LIMITS.items(), ("ws_frames", WS_FRAME_RATE)]:
    _burst, _sep, _interval = _spec.partition("/")
    if not (_sep and _burst.isdigit() and int(_burst) > 0):
        raise ImproperlyConfigured(f"rate limit {_name} must look like 'burst/seconds', got {_spec!r}")
    try:
        if float(_interval) <= 0:
            raise ValueError
    except ValueError:
        raise ImproperlyConfigured(f"rate limit {_name} must look like 'burst/seconds', got {_spec!r}") from None
COMPAT_ENIGMO_WS = _bool("ENIGMO_COMPAT_ENIGMO_WS", False)
COMPAT_ENIGMA_V03 = _bool("ENIGMO_COMPAT_ENIGMA_V03", False)

# --- Relay tuning -------------------------------------------------------------------------
# How often a socket re-checks its queue, refreshes presence and re-validates its device; the
# re-check recovers any nudge the channel layer dropped.
RELAY_TICK_SECONDS = _positive_float("ENIGMO_RELAY_TICK_SECONDS", 15.0)
# Database worker threads per process for socket work (unset: 8 on PostgreSQL, 2 on SQLite).
RELAY_DB_THREADS = _optional_positive_int("ENIGMO_RELAY_DB_THREADS")
RELAY_LAYER_CONCURRENCY = _positive_int("ENIGMO_RELAY_LAYER_CONCURRENCY", 24)
# Undelivered envelopes kept per device; older ones are trimmed and the device told how many.
DEVICE_QUEUE_CAP = _positive_int("ENIGMO_DEVICE_QUEUE_CAP", 10_000)
# Compatibility surfaces (docs/compat.md).
COMPAT_ENIGMA_V03_STRICT = _bool("ENIGMO_COMPAT_ENIGMA_V03_STRICT", False)
COMPAT_MAX_FRAME_BYTES = _positive_int("ENIGMO_COMPAT_MAX_FRAME_BYTES", 128 * 1024)
