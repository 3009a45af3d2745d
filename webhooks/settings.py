"""Service settings, read from the environment (prefix ``WEBHOOKS_``)."""

from __future__ import annotations

import binascii
import math
from base64 import urlsafe_b64decode
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_RETRY_SCHEDULE = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message names its variable, in one line, and
    never quotes a value that may be secret. The ``webhooks`` command prints it and exits non-zero."""

    @classmethod
    def of(cls, exc: ValidationError) -> SettingsError:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            message = error["msg"].removeprefix("Value error, ")
            loc = error["loc"]
            problems.append(f"WEBHOOKS_{str(loc[0]).upper()}: {message}" if loc else message)
        return cls("; ".join(problems))


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    # No setting is infinite or NaN: every number is a count, a size or seconds.
    model_config = SettingsConfigDict(env_prefix="WEBHOOKS_", extra="ignore", allow_inf_nan=False)

    # Connections. Both unset: `webhooks dev` starts the embedded default.
    mongodb_url: str | None = None
    mongodb_database: str = "webhooks"
    redis_url: str | None = None
    # Redis Sentinel (``host:port,host:port``) and the monitored master's name: both set, or neither.
    # With sentinels, WEBHOOKS_REDIS_URL is optional and only lends its database, user and password.
    redis_sentinels: Annotated[tuple[str, ...], NoDecode] = ()
    redis_sentinel_master: str | None = None

    # Destinations.
    allow_http: bool = False
    allow_private_destinations: bool = False
    # Optional HTTP(S) proxy for every delivery (aiohttp ``proxy=``). The proxy must enforce the
    # destination policy for the addresses it resolves: through a proxy the worker cannot pin them.
    egress_proxy: str | None = None

    # Delivery.
    retry_schedule: Annotated[tuple[float, ...], NoDecode] = DEFAULT_RETRY_SCHEDULE
    delivery_timeout: float = Field(default=10.0, gt=0)
    disable_after_failures: int = Field(default=10, ge=1)
    retry_after_cap: float = Field(default=60.0, ge=0)
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    idempotency_window_hours: int = Field(default=24, ge=1)
    delivery_retention_days: int = Field(default=30, ge=1)
    # The worker's sweeper deletes expired documents itself (webhooks.repositories.expiry), for a store whose
    # own TTL monitor is off: the embedded SecantusDB (``webhooks dev`` turns this on). MongoDB needs no help.
    retention_sweep: bool = False
    sweep_interval: float = Field(default=5.0, gt=0)
    sweep_grace: float = Field(default=5.0, ge=0)
    worker_poll_delay: float = Field(default=0.5, gt=0)  # arq polls only for its cron sweeper
    worker_max_jobs: int = Field(default=50, ge=1)  # arq jobs (the sweeper) per worker
    # Isolation (webhooks.lanes): attempts in flight per webhook across all workers (a webhook's
    # ``maxInFlight`` overrides it, from 1 to ``webhook_max_in_flight_cap``), attempts in flight per worker
    # process, and the consecutive timeouts/connection failures that open a webhook's breaker.
    webhook_max_in_flight: int = Field(default=10, ge=1)
    webhook_max_in_flight_cap: int = Field(default=100, ge=1)
    worker_max_in_flight: int = Field(default=500, ge=1)
    breaker_open_after: int = Field(default=5, ge=1)
    user_agent: str = "HatchBeacon-Webhooks/1.0"
    queue_name: str = Field(default="webhooks:deliveries", min_length=1)
    # Seconds a new event is also kept in Redis for the worker's first attempts (webhooks.handoff); 0: off.
    event_handoff_ttl: float = Field(default=120.0, ge=0)

    # Operations (see the README, section "Operating").
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)  # off: no worker metrics endpoint
    worker_heartbeat_interval: float = Field(default=5.0, gt=0)
    worker_heartbeat_ttl: float = Field(
        default=30.0, gt=0
    )  # `webhooks worker --check` wants one fresher than this
    worker_shutdown_wait: float = Field(default=20.0, ge=0)  # SIGTERM: seconds in-flight jobs get to finish

    # Accounts.
    max_webhooks_per_account: int = Field(default=100, ge=1)
    # Seconds an API key or webhook lookup is answered from a process's cache. Changes reach every
    # process at once over Redis (webhooks.invalidation); this only bounds staleness if a message is lost.
    auth_cache_ttl: float = Field(default=1.0, ge=0)
    webhook_cache_ttl: float = Field(default=1.0, ge=0, le=1.0)

    # Secrets at rest: Fernet keys, newest first. Empty: the embedded default writes one to its data dir.
    secret_keys: Annotated[tuple[str, ...], NoDecode] = ()

    # API surface.
    graphiql: bool = True
    introspection: bool = True
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = ()
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_query_depth: int = Field(default=10, ge=1)
    max_aliases: int = Field(default=15, ge=0)
    max_tokens: int = Field(default=2000, ge=100)
    # Seconds `webhooks serve` keeps an idle HTTP connection open. Longer than the clients' and load
    # balancers' own idle timeouts (aiohttp 15 s, AWS ALB 60 s), so that the server is never the side that
    # closes a connection a client is about to reuse (uvicorn's default, 5 s, races with them).
    http_keep_alive_seconds: float = Field(default=75.0, gt=0, le=3600)
    # Per-account limits (fixed one-minute windows in Redis).
    rate_limit_publish_per_minute: int = Field(default=6000, ge=1)
    rate_limit_test_per_minute: int = Field(default=30, ge=1)
    # Customer portal (graphql_api/portal.py): who may embed /portal (CSP frame-ancestors), and the
    # service's public base URL for portal links (unset: taken from the request).
    portal_frame_ancestors: str = "'self'"
    public_url: str | None = None

    data_dir: Path = Path(".webhooks")

    # Logging: JSON lines (one object per line) or readable text; the root level.
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list | tuple):
            try:
                delays = tuple(float(v) for v in value)
            except (TypeError, ValueError) as exc:
                raise ValueError("retry schedule must be comma-separated seconds, e.g. 0,1,2,4,8,16") from exc
            if not delays or any(d < 0 or not math.isfinite(d) for d in delays):
                raise ValueError("retry schedule needs at least one delay, each finite seconds ≥ 0")
            return delays
        return value

    @field_validator("egress_proxy", "mongodb_url", "redis_url", "public_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty variable (common in templated deployments) means unset, not an empty URL."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("mongodb_database")
    @classmethod
    def _database_name(cls, value: str) -> str:
        if not 0 < len(value) < 64 or any(c in value for c in '/\\. "$\x00'):
            raise ValueError('must be 1 to 63 characters, none of them / \\ . " $ or a space')
        return value

    @field_validator("user_agent")
    @classmethod
    def _header_value(cls, value: str) -> str:
        # a header value may hold any octet but controls (RFC 9110: VCHAR, obs-text, SP, HTAB); aiohttp sends
        # non-ASCII letters as UTF-8, as deliveries always carried them; a line break would split the header
        if not value.strip() or any((c < " " and c != "\t") or c == "\x7f" for c in value):
            raise ValueError("must be printable, with no control characters (it is sent as a header)")
        return value

    @field_validator("mongodb_url")
    @classmethod
    def _mongodb_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must be a mongodb:// or mongodb+srv:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(value, ("redis", "rediss", "unix"), "a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("egress_proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(value, ("http", "https"), "an http:// or https:// proxy URL")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(
                value, ("http", "https"), "an http:// or https:// base URL, e.g. https://webhooks.example.com"
            )
        return value

    @field_validator("secret_keys")
    @classmethod
    def _fernet_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for number, key in enumerate(value, 1):
            try:
                ok = len(urlsafe_b64decode(key.encode("ascii"))) == 32
            except (UnicodeEncodeError, binascii.Error, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"key {number} is not a Fernet key (32 url-safe base64-encoded bytes)")
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case_insensitive(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return value.strip().lower() if value.strip().lower() in ("json", "text") else value.strip().upper()

    @field_validator("secret_keys", "allowed_origins", "redis_sentinels", mode="before")
    @classmethod
    def _parse_csv(cls, value: object) -> object:
        value = _split_csv(value)
        return tuple(value) if isinstance(value, list) else value


def _check_url(value: str, schemes: tuple[str, ...], what: str) -> None:
    """Raise (without quoting the URL: it may hold a password) unless it has one of ``schemes`` and a host.
    A redis:// or rediss:// URL may name no host: redis-py and arq read it as localhost, and with Redis
    Sentinel the URL lends only its database and credentials (e.g. ``redis://:PASSWORD@/0``)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError(f"must be {what} (it does not parse)") from None
    hostless = parts.scheme in ("unix", "redis", "rediss")
    if parts.scheme not in schemes or (not hostless and not parts.hostname):
        raise ValueError(f"must be {what}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The environment's settings; a bad value raises :class:`SettingsError` naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError.of(exc) from None
