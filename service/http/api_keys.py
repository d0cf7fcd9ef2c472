"""Optional API keys for inference (``ADAFOCUS_API_KEYS_FILE``): who may call ``POST /classify``, how often, and how
many requests at once.

Off by default. With the file set, every /classify request names its key in ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``: none is 401 ``api_key_required``, one that is not in the file 403 ``api_key_invalid``. Each key
has a token bucket (``rate`` requests a second, up to ``burst`` at once) and a cap on its requests in flight
(``concurrency``); past either the answer is 429 ``rate_limited`` or ``concurrency_limited`` with Retry-After. The
limits are the ``ADAFOCUS_API_KEY_*`` settings, or the key's own on its line of the file. Keys are kept as SHA-256
digests only and compared in constant time with every key of the file (no early exit); the metrics and the logs
name a key by its *name*, never by the key. The file (its format: ``service.schemas.parse_api_keys``) is read again
when it changed, checked at most every ``ADAFOCUS_API_KEYS_POLL_S`` when a request asks: a key removed from it stops
working at the next check; an invalid edit is logged and ignored. The operator token of PUT /budget is separate
(service/http/auth.py); the FastAPI dependency is ``require_api_key`` in service/http/routes.py.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.schemas import ApiKeyEntry, ApiKeyFileError, api_key_digest, read_api_keys

log = logging.getLogger(__name__)
UNKNOWN = "-"  # the key name of a request that sent no key, or one not in the file
UNREAD = (-1, -1, -1)  # no file has this (inode, mtime, size): the first check reads the file


class KeyRefused(Exception):
    """A /classify request the API key check refuses; ``name`` and ``reason`` label the refusal in the metrics."""

    reason = "refused"

    def __init__(self, message: str, name: str = UNKNOWN) -> None:
        super().__init__(message)
        self.name = name


class ApiKeyMissing(KeyRefused):
    """No key in ``Authorization: Bearer`` or ``X-API-Key``."""

    reason = "missing"


class ApiKeyInvalid(KeyRefused):
    """A key that is not in the API keys file."""

    reason = "invalid"


class RateLimited(KeyRefused):
    """The key's token bucket is empty; ``retry_after_s``: when it holds a token again."""

    reason = "rate_limited"

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"API key {name!r} is over its request rate; retry in {retry_after_s:.2g} s", name)
        self.retry_after_s = retry_after_s


class ConcurrencyLimited(KeyRefused):
    """The key already has its limit of requests in flight."""

    reason = "concurrency_limited"

    def __init__(self, name: str, limit: int) -> None:
        super().__init__(f"API key {name!r} already has its limit of {limit} requests in flight", name)


@dataclass(frozen=True)
class KeyLimits:
    """A key's limits; None: no limit. The settings' are the defaults of every key (``of``)."""

    rate: float | None = None  # requests per second
    burst: int | None = None  # the token bucket's size; None with a rate: the rate rounded up
    concurrency: int | None = None  # requests in flight

    def of(self, entry: ApiKeyEntry) -> KeyLimits:
        """``entry``'s own limits, these where it has none."""
        rate = self.rate if entry.rate is None else entry.rate
        burst = self.burst if entry.burst is None else entry.burst
        if rate is not None and burst is None:
            burst = max(1, math.ceil(rate))
        return KeyLimits(rate, burst, self.concurrency if entry.concurrency is None else entry.concurrency)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held, one taken per request; pure (the caller gives the time)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)  # a new key may send its whole burst at once
        self._stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else the seconds until there is one (and nothing is taken)."""
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def presented_key(bearer: str | None, header: str | None) -> str | None:
    """The key a request sent: ``X-API-Key``, else the ``Authorization: Bearer`` token; None for neither."""
    for key in (header, bearer):
        if key is not None and key.strip():
            return key.strip()
    return None


class Grant:
    """An admitted request of the key ``name``: ``release`` (once its answer ended, streamed or not) frees its slot."""

    def __init__(self, name: str, release: Callable[[str], None]) -> None:
        self.name = name
        self._release: Callable[[str], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            self._release(self.name)
            self._release = None  # a second call is a no-op


class ApiKeys:
    """The check of every /classify request: ``admit`` the key a request sent, or raise a ``KeyRefused``.

    ``entries``: the keys, asked for on every check (``KeyFile.entries``); ``defaults``: the limits of a key whose
    line gives none; ``clock``: seconds, monotonic (the token buckets). Runs on the event loop only.
    """

    def __init__(
        self, entries: Callable[[], Sequence[ApiKeyEntry]], defaults: KeyLimits, clock: Callable[[], float]
    ) -> None:
        self.entries, self.defaults, self.clock = entries, defaults, clock
        self._buckets: dict[str, tuple[KeyLimits, TokenBucket | None]] = {}  # by key name; kept across reloads
        self._inflight: dict[str, int] = {}

    def admit(self, presented: str | None) -> Grant:
        if presented is None:
            raise ApiKeyMissing("send an API key: `Authorization: Bearer <key>` or `X-API-Key: <key>`")
        entry = self._find(presented)
        if entry is None:
            raise ApiKeyInvalid("this API key is not accepted here")
        limits = self.defaults.of(entry)
        inflight = self._inflight.get(entry.name, 0)
        if limits.concurrency is not None and inflight >= limits.concurrency:
            raise ConcurrencyLimited(entry.name, limits.concurrency)
        wait = self._take(entry.name, limits)
        if wait > 0:
            raise RateLimited(entry.name, wait)
        self._inflight[entry.name] = inflight + 1
        return Grant(entry.name, self._release)

    def inflight(self, name: str) -> int:
        """Requests of the key ``name`` in flight now."""
        return self._inflight.get(name, 0)

    def _find(self, presented: str) -> ApiKeyEntry | None:
        """The entry of ``presented``: compared with every key, each in constant time, the loop never cut short."""
        digest = api_key_digest(presented)
        found = None
        for entry in self.entries():
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found

    def _take(self, name: str, limits: KeyLimits) -> float:
        """A token of ``name``'s bucket (0.0), or the wait for one; a bucket starts anew when its limits change."""
        held = self._buckets.get(name)
        if held is None or held[0] != limits:
            bucket = None
            if limits.rate is not None and limits.burst is not None:
                bucket = TokenBucket(limits.rate, limits.burst, self.clock())
            held = self._buckets[name] = (limits, bucket)
        return 0.0 if held[1] is None else held[1].take(self.clock())

    def _release(self, name: str) -> None:
        left = self._inflight.get(name, 0) - 1
        if left > 0:
            self._inflight[name] = left
        else:
            self._inflight.pop(name, None)


class KeyFile:
    """The API keys file's entries, read again when the file changed: the path is stat-ed anew (a ConfigMap's
    symlink swap is seen) at most every ``poll_s`` seconds, when ``entries`` is called. A file that cannot be read
    or parsed is logged (its line numbers, never a key) and the entries read before are kept."""

    def __init__(self, path: Path, poll_s: float, clock: Callable[[], float]) -> None:
        self.path, self.poll_s, self.clock = path, poll_s, clock
        self._entries: tuple[ApiKeyEntry, ...] = ()  # until the file is read: every key refused
        self._stamp: tuple[int, int, int] | None = UNREAD
        self._checked = clock()
        self._reload()

    def entries(self) -> tuple[ApiKeyEntry, ...]:
        now = self.clock()
        if now - self._checked >= self.poll_s:
            self._checked = now
            self._reload()
        return self._entries

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp  # one log line per change, not one per check
        try:
            entries = read_api_keys(self.path)
        except ApiKeyFileError as exc:
            log.error("API keys file %s not used: %s; the %d keys read before still apply", self.path, exc,
                      len(self._entries))
            return
        if entries != self._entries:
            log.info("API keys file %s: %d keys (%s)", self.path, len(entries), ", ".join(e.name for e in entries))
        self._entries = entries
