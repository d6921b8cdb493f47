"""Rate-limit budgets shared by every server process, kept in Redis.

Why: the in-memory `RateLimiter` gives each process its own budget, so `cadence serve
--workers 4`, or three instances behind a load balancer, let a device (or a flooding address)
make N times its `device_rate_per_s`. With `rate_limit_redis_url` set, every process charges
the same token bucket in Redis instead.

How: one Lua script per charge reads, refills and charges a bucket atomically, on the Redis
server's clock (`TIME`), so hosts with skewed clocks still agree. The early "is this key
exhausted?" check made before a body is parsed asks no round trip: it reads what Redis said
at this process's last charge of the key (other processes only take tokens, so it errs
towards letting a request on to its charge, which decides). A bucket is a hash
(`tokens`, `last`) under ``cadence:rl:<name>:<key>`` and expires once it would be full again
(or after `remember_s`, for the device budget, whose "seen before" answer `known` reads).

When Redis cannot be reached (down, timed out, refused the script), a request is never failed
for it: the call falls back to this process's own in-memory bucket, a warning is logged, and
`fallbacks` counts it (exported as ``cadence_rate_limit_fallbacks_total``). Redis is tried again
`RETRY_S` later, so a dead Redis costs one bounded connect attempt per interval, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from server.services.devices import RateLimiter

log = logging.getLogger(__name__)

#: seconds between attempts to reach Redis again after it failed
RETRY_S = 5.0
#: socket connect / read timeout for Redis, seconds: a hung Redis delays a request by at most this
SOCKET_TIMEOUT_S = 0.05
#: how long a device's bucket is kept (so `known` remembers it), seconds
DEVICE_MEMORY_S = 86_400.0

# KEYS[1]: the bucket. ARGV: rate, burst, mode ("take" | "refund" | "known"), ttl_ms.
# take / refund: {1 if taken (refunded) else 0, tokens left x 1000}; known: {1 if the bucket exists, 0}
_SCRIPT = """
local mode = ARGV[3]
if mode == 'known' then
  return {redis.call('EXISTS', KEYS[1]), 0}
end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(v[1])
local last = tonumber(v[2])
if tokens == nil or last == nil then
  if mode == 'refund' then
    return {0, 0}
  end
  tokens = burst
  last = now
end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local ok = 1
if mode == 'take' then
  if tokens >= 1 then tokens = tokens - 1 else ok = 0 end
else
  tokens = math.min(burst, tokens + 1)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'last', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return {ok, math.floor(tokens * 1000)}
"""


class RedisRateLimiter:
    """`RateLimiter`'s surface (`exhausted`, `allow`, `refund`, `known`) over buckets in Redis.

    `name` keeps the device budget and the refused-request budget apart; `prefix` lets tests
    (or two deployments on one Redis) keep theirs apart too.
    """

    def __init__(self, url: str, name: str, rate: float, burst: float | None = None, *,
                 remember_s: float = 0.0, prefix: str = "cadence:rl",
                 client_factory: Callable[[str], Any] | None = None) -> None:
        self.rate, self.burst = rate, burst or 2 * rate
        self.name, self.prefix = name, prefix
        self.local = RateLimiter(rate, self.burst)  # while Redis cannot be reached
        self.fallbacks = 0
        self.on_fallback: Callable[[], None] | None = None
        # a bucket refills completely in burst/rate s: kept that long, or `remember_s` if longer
        refill_s = self.burst / rate if rate > 0 else 0.0
        self._ttl_ms = int(max(refill_s, remember_s) * 1000) + 1000
        self._url = url
        self._factory = client_factory or _client
        self._client: Any = None
        self._script: Any = None
        self._down_until = 0.0
        self._lock = threading.Lock()
        #: what Redis left each key at this process's last charge or refund, refilled since
        self._seen = RateLimiter(rate, self.burst)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{self.name}:{key}"

    def _call(self, key: str, mode: str) -> int | None:
        """The script's answer for `key`, or None when Redis cannot be used now (fall back).

        A take or refund also notes the tokens it left (`_seen`), which `exhausted` reads.
        """
        if self._redis_down():
            return None
        try:
            if self._script is None:
                with self._lock:
                    if self._script is None:
                        self._client = self._factory(self._url)
                        self._script = self._client.register_script(_SCRIPT)
            ok, milli = self._script(keys=[self._key(key)], args=[repr(self.rate), repr(self.burst), mode, self._ttl_ms])
            if mode != "known":
                self._seen.set(key, int(milli) / 1000.0)
            return int(ok)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: limit locally, never fail the request
            self._down_until = time.monotonic() + RETRY_S
            self.fallbacks += 1
            if self.on_fallback is not None:
                self.on_fallback()
            log.warning("rate limits: Redis at %s unusable (%s: %s); this process limits on its own for %g s",
                        _shown(self._url), type(exc).__name__, str(exc)[:200], RETRY_S)
            return None

    def _redis_down(self) -> bool:
        return time.monotonic() < self._down_until

    def exhausted(self, key: str, now: float | None = None) -> bool:
        """Whether `key`'s next request would be refused (nothing is charged), without asking Redis.

        Answered from what Redis said at this process's last charge of `key`, refilled since:
        other processes only take tokens, so "exhausted" here is exhausted there too, and a
        request let through on a stale "not exhausted" is refused by its charge (`allow`).
        This check runs before every body is parsed; a round trip each time cost ~0.2 ms.
        """
        if self.rate <= 0:
            return False
        return (self.local if self._redis_down() else self._seen).exhausted(key, now)

    def allow(self, key: str, now: float | None = None) -> bool:
        """Charge one request to `key`; False (refuse) when its budget is used up."""
        if self.rate <= 0:
            return True
        answer = self._call(key, "take")
        return self.local.allow(key, now) if answer is None else answer == 1

    def refund(self, key: str) -> None:
        """Give back one request's token (charged for a request refused afterwards)."""
        if self.rate > 0 and self._call(key, "refund") is None:
            self.local.refund(key)

    def known(self, key: str) -> bool:
        """Whether `key` was charged within `remember_s` (for devices: it verified a request)."""
        answer = self._call(key, "known")
        return self.local.known(key) if answer is None else answer == 1

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _client(url: str) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # no retries: a reset connection went round three more times with backoff (~130 ms) by default
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
                                retry=Retry(NoBackoff(), 0))


def _shown(url: str) -> str:
    """`url` without a password, for logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}{f':{parts.port}' if parts.port else ''}").geturl()


def make_limiters(redis_url: str, rate: float) -> tuple[RateLimiter | RedisRateLimiter, RateLimiter | RedisRateLimiter]:
    """(device budget, refused-request budget): in this process, or shared through Redis when `redis_url` is set."""
    if not redis_url:
        return RateLimiter(rate), RateLimiter(rate)
    return (RedisRateLimiter(redis_url, "device", rate, remember_s=DEVICE_MEMORY_S),
            RedisRateLimiter(redis_url, "refused", rate))
