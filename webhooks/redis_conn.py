"""Every Redis connection of the service is built here: one plain server, or a Sentinel-monitored master.

Settings (``webhooks.settings``):

- ``WEBHOOKS_REDIS_URL`` alone: one Redis server (``redis://[user:password@]host:port/db``).
- ``WEBHOOKS_REDIS_SENTINELS=host:port,host:port,…`` with ``WEBHOOKS_REDIS_SENTINEL_MASTER=<name>``: the
  master that the sentinels monitor, re-discovered after a failover. ``WEBHOOKS_REDIS_URL`` is then
  optional and lends only its database number, user name and password (its host is ignored).

The same :class:`RedisTarget` serves the arq queue (:meth:`RedisTarget.arq_settings`), the live feed and
the rate limiter (:meth:`RedisTarget.client`) and ``webhooks worker --check``, so all of them follow a
failover alike: a connection to the old master fails (refused, or ``READONLY`` once it is demoted), and
the next connection asks the sentinels where the master is now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from webhooks.settings import Settings, SettingsError


class RedisConfigError(SettingsError):
    """The Redis settings are incomplete or malformed (the message names the variable)."""


def parse_sentinels(entries: tuple[str, ...] | list[str]) -> list[tuple[str, int]]:
    """``["h1:26379", "[::1]:26380"]`` → ``[("h1", 26379), ("::1", 26380)]``; a clear error otherwise."""
    parsed: list[tuple[str, int]] = []
    for entry in entries:
        host, sep, port = entry.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RedisConfigError(
                f"WEBHOOKS_REDIS_SENTINELS: {entry!r} is not host:port (e.g. sentinel-0:26379)"
            )
        parsed.append((host, int(port)))
    return parsed


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is: ``url`` (plain) or ``sentinels`` + ``master`` (with the URL's db and credentials)."""

    url: str | None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> RedisTarget:
        if settings.redis_sentinels or settings.redis_sentinel_master:
            if not settings.redis_sentinels:
                raise RedisConfigError(
                    "WEBHOOKS_REDIS_SENTINEL_MASTER is set but WEBHOOKS_REDIS_SENTINELS is empty"
                )
            if not settings.redis_sentinel_master:
                raise RedisConfigError(
                    "WEBHOOKS_REDIS_SENTINELS is set but WEBHOOKS_REDIS_SENTINEL_MASTER (the master's name) "
                    "is not"
                )
            return cls(
                settings.redis_url,
                tuple(parse_sentinels(settings.redis_sentinels)),
                settings.redis_sentinel_master,
            )
        if not settings.redis_url:
            raise RedisConfigError(
                "WEBHOOKS_REDIS_URL is not set (nor WEBHOOKS_REDIS_SENTINELS): use `webhooks dev` for the "
                "embedded default"
            )
        return cls(settings.redis_url)

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)

    def _url_parts(self) -> tuple[int, str | None, str | None, bool]:
        """(database, username, password, tls) from the URL, or the defaults."""
        if not self.url:
            return 0, None, None, False
        base = RedisSettings.from_dsn(self.url)
        return base.database, base.username, base.password, base.ssl

    def arq_settings(self) -> RedisSettings:
        """Settings for arq's ``create_pool`` and its worker."""
        if not self.uses_sentinel:
            assert self.url is not None
            return RedisSettings.from_dsn(self.url)
        database, username, password, tls = self._url_parts()
        assert self.master is not None
        return RedisSettings(
            host=list(self.sentinels),
            sentinel=True,
            sentinel_master=self.master,
            database=database,
            username=username,
            password=password,
            ssl=tls,
        )

    def client(self, **kwargs: Any) -> Redis:
        """A ``redis.asyncio`` client (lazy: connects on first command); ``kwargs`` tune its connections."""
        if not self.uses_sentinel:
            assert self.url is not None
            plain: Redis = Redis.from_url(self.url, **kwargs)
            return plain
        database, username, password, tls = self._url_parts()
        socket_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(self.sentinels),
            sentinel_kwargs={**socket_kwargs, "ssl": tls} if tls else socket_kwargs,
            db=database,
            username=username,
            password=password,
            ssl=tls,
            **kwargs,
        )
        assert self.master is not None
        client: Redis = sentinel.master_for(self.master)
        return client

    def describe(self) -> str:
        """For logs: never the password."""
        if self.uses_sentinel:
            nodes = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel master {self.master!r} via {nodes}"
        parsed = urlparse(self.url or "")
        return f"{parsed.hostname}:{parsed.port or 6379}"


def redis_target(settings: Settings) -> RedisTarget:
    return RedisTarget.of(settings)
