"""Rate budgets shared through Redis (`rate_limit_redis_url`): one budget for every process.

These run against the real Redis at 127.0.0.1:6379 (on the machines that have one); without
it they are skipped, and the skip says why. Each test uses keys under a prefix of its own and
deletes them afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from cadence.settings import Settings
from server.services import shared_limits
from server.services.devices import RateLimiter
from server.services.shared_limits import RedisRateLimiter, make_limiters
from server.signing import sign_request
from tests.server.conftest import built_app, make_settings, new_device

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_unreachable() -> str | None:
    """Why Redis at 127.0.0.1:6379 cannot be used, or None when it can."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "skip, and say why"
        return f"Redis at 127.0.0.1:6379 not reachable ({type(exc).__name__}: {str(exc).strip()[:120]})"
    return None


@pytest.fixture()
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    why = redis_unreachable()
    if why:
        pytest.skip(why)
    import redis

    p = f"cadence-test:{uuid.uuid4().hex[:12]}"
    yield p
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{p}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def _shared(prefix: str, name: str = "device", rate: float = 2.0) -> RedisRateLimiter:
    return RedisRateLimiter(REDIS_URL, name, rate, prefix=prefix)


def test_two_processes_draw_on_one_budget(prefix: str) -> None:
    """Two workers' limiters (as two processes would build them) allow the burst once between them."""
    a, b = _shared(prefix), _shared(prefix)
    answers = [(a if i % 2 else b).allow("dev-1") for i in range(10)]
    # a burst of 2 x rate = 4; at most one more token refills in the time 10 calls take
    assert 4 <= sum(answers) <= 5 and answers[:4] == [True] * 4 and not answers[-1], answers
    assert a.exhausted("dev-1") and b.exhausted("dev-1")
    assert not a.exhausted("dev-2")  # keys are budgets of their own
    local = [RateLimiter(2.0), RateLimiter(2.0)]  # what each process did on its own: twice the burst
    assert sum(local[i % 2].allow("dev-1") for i in range(10)) == 8


def test_the_early_check_needs_no_round_trip_and_the_charge_decides(prefix: str) -> None:
    a, b = _shared(prefix), _shared(prefix)  # a burst of 4
    assert all(a.allow("k") for _ in range(4))
    trips: list[int] = []
    script = a._script
    a._script = lambda **kw: trips.append(1) or script(**kw)
    assert a.exhausted("k") and trips == []  # from what Redis said at a's own charges
    assert not b.exhausted("k")  # b never charged k: it lets the request on to its charge...
    assert not b.allow("k")  # ...which Redis refuses
    assert b.exhausted("k")  # and now b knows too


def test_the_budget_refills_and_a_refund_gives_a_token_back(prefix: str) -> None:
    lim = _shared(prefix, rate=4.0)  # burst 8
    while lim.allow("d"):
        pass
    assert lim.exhausted("d")
    lim.refund("d")
    assert not lim.exhausted("d") and lim.allow("d") and not lim.allow("d")
    time.sleep(0.5)  # 4 tokens/s on Redis's clock: two back
    assert lim.allow("d")


def test_known_remembers_charged_devices_only(prefix: str) -> None:
    lim = _shared(prefix)
    assert not lim.known("dev-x")
    lim.refund("dev-x")  # a refund of a key never charged makes nothing up
    assert not lim.known("dev-x")
    lim.allow("dev-x")
    assert lim.known("dev-x") and _shared(prefix).known("dev-x")  # another process sees it too


def test_the_device_budget_is_remembered_for_a_day_and_the_refused_one_until_full(prefix: str) -> None:
    import redis

    device, refused = make_limiters(REDIS_URL, 2.0)
    assert isinstance(device, RedisRateLimiter) and isinstance(refused, RedisRateLimiter)
    device.prefix = refused.prefix = prefix
    device.allow("k")
    refused.allow("k")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert 86_000_000 < client.pttl(f"{prefix}:device:k") <= 86_401_000
        assert 0 < client.pttl(f"{prefix}:refused:k") <= 3_000  # full again after burst / rate = 2 s
    finally:
        client.close()


def test_without_a_url_each_process_keeps_its_own_budget() -> None:
    device, refused = make_limiters("", 2.0)
    assert type(device) is RateLimiter and type(refused) is RateLimiter and device is not refused


def test_an_unusable_redis_falls_back_to_this_process_and_retries_later(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []

    def broken(url: str) -> object:
        attempts.append(url)
        raise ConnectionError("refused")

    lim = RedisRateLimiter("redis://127.0.0.1:1/0", "device", 2.0, client_factory=broken)
    seen = []
    lim.on_fallback = lambda: seen.append(1)
    answers = [lim.allow("d") for _ in range(6)]
    assert answers == [True] * 4 + [False] * 2  # the local bucket still limits
    assert lim.exhausted("d") and lim.known("d")
    assert len(attempts) == 1 and lim.fallbacks == 1 and seen == [1]  # one attempt per RETRY_S, not per call
    real = time.monotonic
    monkeypatch.setattr(shared_limits.time, "monotonic", lambda: real() + shared_limits.RETRY_S + 1)
    lim.allow("d")
    assert len(attempts) == 2


def test_a_closed_port_is_a_fallback_not_an_error() -> None:
    """Through the real client: a refused connection is answered locally within the socket timeout."""
    lim = RedisRateLimiter("redis://127.0.0.1:1/0", "device", 2.0)
    t0 = time.perf_counter()
    assert lim.allow("d") and lim.fallbacks == 1
    assert time.perf_counter() - t0 < 2.0


def test_a_hung_redis_costs_one_short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis that accepts but never answers: one socket timeout (no retries), then the local budget.

    The timeout is raised to 0.5 s here so that one timeout and two (the client's default retry) differ
    by more than a loaded machine's scheduling noise.
    """
    import socket
    import threading

    monkeypatch.setattr(shared_limits, "SOCKET_TIMEOUT_S", 0.5)

    held: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(5)
        port = srv.getsockname()[1]
        acceptor = threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True)
        acceptor.start()
        lim = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", "device", 2.0)
        t0 = time.perf_counter()
        assert lim.allow("d") and lim.fallbacks == 1
        waited = time.perf_counter() - t0
        acceptor.join()
        for conn in held:
            conn.close()
    assert 0.5 <= waited < 0.95, waited


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://127.0.0.1:port/0", "redis://"])
def test_a_url_that_is_not_redis_is_refused_at_start(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValidationError, match="rate_limit_redis_url"):
        make_settings(tmp_path, rate_limit_redis_url=url)
    assert Settings(rate_limit_redis_url=" redis://127.0.0.1:6379/0 ").rate_limit_redis_url == "redis://127.0.0.1:6379/0"


def _share(app: FastAPI, prefix: str) -> None:
    state = app.state.cadence
    state.limiter.prefix = state.failures.prefix = prefix


def test_two_server_processes_share_a_device_budget(tmp_path: Path, prefix: str) -> None:
    """Two apps on one database (as two workers or instances): a device's budget is spent across both."""
    settings = make_settings(tmp_path, device_rate_per_s=0.5, rate_limit_redis_url=REDIS_URL)  # a burst of 1
    with built_app(settings) as one, built_app(settings) as two:
        _share(one, prefix)
        _share(two, prefix)
        with TestClient(one) as c1, TestClient(two) as c2:
            dev = new_device(c1, "shared")
            t0 = time.monotonic()
            codes = []
            for i in range(6):
                headers = sign_request(dev.key, dev.device_id, "GET", "/v1/users/shared/consents", b"")
                codes.append((c1 if i % 2 else c2).get("/v1/users/shared/consents", headers=headers).status_code)
            refills = int((time.monotonic() - t0) * 0.5)
    # each process on its own would have let 2 through (its own burst of 1 each)
    assert 1 <= codes.count(200) <= 1 + refills and codes.count(429) == 6 - codes.count(200), codes
    assert codes[0] == 200


def test_a_dead_redis_does_not_fail_requests_and_is_counted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, device_rate_per_s=2.0, rate_limit_redis_url="redis://127.0.0.1:1/0")
    with built_app(settings) as app, TestClient(app) as client:
        dev = new_device(client, "nored")
        codes = [dev.signed("GET", "/v1/users/nored/consents").status_code for _ in range(6)]
        assert codes[0] == 200 and codes[-1] == 429  # limited by the process's own budget meanwhile
        text = client.get("/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith('cadence_rate_limit_fallbacks_total{budget="device"}'))
    assert float(line.rsplit(" ", 1)[1]) >= 1
