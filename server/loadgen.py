"""Load generation against a real server process (`cadence bench api`, the crash test).

The server runs in its own process (own GIL), started and stopped here.

Requests are built and signed before the timed phase, so the client measures the server,
not its own signing. Evidence windows are SYNTHETIC (evaluation/synthetic.py); each request
gets its own windows: a person's probe window with its times shifted and its feature values
varied by about 0.1 % (that person's next window; windows with the same values are refused
as replays).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modalities.events import MODALITIES, FeatureWindow
from server.client.api import DeviceClient
from server.client.features import evidence_unit
from server.rawhttp import ConnectionPool, new_event_loop, raw_request
from server.runner import free_port
from server.signing import HEADER_INSTANCE, sign_request


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its worker processes (Linux)."""
        return process_tree_cpu(self.proc.pid)

    def worker_cpu_seconds(self) -> dict[int, float]:
        """CPU seconds per worker process (the server process itself when it has no workers)."""
        children, cpu = _proc_table()
        kids = children.get(self.proc.pid) or [self.proc.pid]
        return {pid: _tree_cpu(pid, children, cpu) for pid in kids}

    def kill(self) -> None:
        """SIGKILL the server's whole process group: no shutdown handlers run (what a crash looks like).

        The supervisor alone would leave its uvicorn workers running, holding the CPUs whose
        claim files `remove_cpu_locks` then deletes.
        """
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        remove_cpu_locks(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM the supervisor, which shuts its workers down gracefully; `kill` what is left after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()  # not the group: a second SIGTERM makes uvicorn workers skip their clean-up
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # also any worker the supervisor left behind


def _signal_group(pgid: int, sig: int) -> None:
    """`sig` to process group `pgid` (the server runs in its own session); nothing when it is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def remove_cpu_locks(supervisor_pid: int) -> None:
    """Delete the CPU claim files of a stopped server's pinned workers (server/affinity.py names them)."""
    for lock in Path(tempfile.gettempdir()).glob(f"cadence-cpu-{supervisor_pid}-*.lock"):
        lock.unlink(missing_ok=True)


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like Ctrl-C so every `finally` and `with` clean-up runs; exit 143."""


#: a SIGTERM is being unwound: further ones are ignored until the outermost `sigterm_unwinds` is left
_terminating = False


def _raise_terminated(signum: int, frame: object) -> None:
    """The SIGTERM handler of every `sigterm_unwinds` block, nested or not: raises once, then ignores."""
    global _terminating
    if _terminating:
        return
    _terminating = True
    raise Terminated(128 + signum)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM (`timeout`, a CI cancel) raises `Terminated` instead of killing the process.

    Without it the server processes, the stall probe and the work folder outlive the bench.
    A second SIGTERM during the clean-up is ignored, also in the clean-up of outer blocks
    when blocks nest (`bench api` in `server_process`). Main thread only (elsewhere a no-op).
    """
    global _terminating
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous is not _raise_terminated:  # the outermost block: the next SIGTERM unwinds again
            _terminating = False


def _proc_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """One pass over /proc: children of each pid, and each pid's user + system CPU seconds."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    return children, cpu


def _tree_cpu(root: int, children: dict[int, list[int]], cpu: dict[int, float]) -> float:
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def process_tree_cpu(root: int) -> float:
    """User + system CPU seconds of `root` and its descendants, from /proc (0.0 elsewhere)."""
    return _tree_cpu(root, *_proc_table())


def start_server(workdir: Path, *, env: dict[str, str] | None = None, port: int | None = None,
                 timeout: float = 60.0) -> ServerProcess:
    """`cadence serve` in a subprocess on 127.0.0.1 with its database in `workdir`."""
    port = port or free_port()
    full = dict(os.environ)
    full.update({"CADENCE_DATABASE_URL": f"sqlite:///{workdir / 'api.sqlite'}",
                 "CADENCE_MODEL_REGISTRY": str(workdir / "registry"), "CADENCE_HOST": "127.0.0.1"})
    full.update(env or {})
    log_path = workdir / f"server-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", "from cadence.cli import app; app()", "serve",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                                 # clients queue on their connections under overload: keep them open
                                 "--keep-alive", "120"],
                                # own process group: `kill`/`stop` reach its workers too
                                stdout=log, stderr=subprocess.STDOUT, env=full, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    srv = ServerProcess(url, proc, log_path)
    deadline = time.monotonic() + timeout
    # every worker must answer before the caller spreads connections over them: a worker still
    # starting would leave all of them to the first (each probe is a new connection, accepted by
    # whichever worker wakes, and /v1/health names the process that answered)
    workers = int(full.get("CADENCE_API_WORKERS", "1") or 1)
    seen: set[str] = set()
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                r = httpx.get(url + "/v1/health", timeout=1.0)
                if r.status_code == 200:
                    seen.add(r.headers.get(HEADER_INSTANCE, ""))
                    if len(seen) >= workers:
                        return srv
            except httpx.HTTPError:
                pass
            time.sleep(0.02 if seen else 0.1)
        if seen:  # answering, but not every worker did: better measured than not at all
            logging.getLogger(__name__).warning("only %d of %d server workers answered within %.0f s",
                                                len(seen), workers, timeout)
            return srv
    except BaseException:  # interrupted while waiting (Ctrl-C, SIGTERM): do not leave the server behind
        srv.stop()
        raise
    srv.kill()
    raise RuntimeError(f"server did not answer on {url} within {timeout} s")


@contextmanager
def server_process(workdir: Path, **kw: Any) -> Iterator[ServerProcess]:
    """A started server, stopped on leaving the block (also on Ctrl-C or SIGTERM: `sigterm_unwinds`)."""
    with sigterm_unwinds():
        srv = start_server(workdir, **kw)
        try:
            yield srv
        finally:
            srv.stop()


@dataclass
class Prepared:
    """One ready-to-send request (body bytes and signed headers) and its idempotency key."""

    path: str
    body: bytes
    headers: dict[str, str]
    key: str = ""
    user: str = ""


@dataclass
class Population:
    """Enrolled users and their devices, plus per-user probe windows for the load."""

    devices: list[DeviceClient]
    probes: dict[str, dict[str, list[FeatureWindow]]] = field(default_factory=dict)
    #: requests built so far (each gets windows no other request has)
    issued: int = 0


def enrol_population(url: str, n_users: int, *, seed: int = 0) -> Population:
    """Register, consent and enrol `n_users` SYNTHETIC people; keep their later windows as probes."""
    from server.demo import synthetic_people

    people = synthetic_people(seed, n_users, first=100)
    devices, probes = [], {}
    for i, person in enumerate(people):
        dev = DeviceClient(url, user_id=f"load-user-{seed}-{i}")
        dev.register(platform="loadgen")
        for m in MODALITIES:
            dev.grant_consent(m)
            dev.enrol(person.enrol[m][:8])
        devices.append(dev)
        probes[dev.user_id] = person.probes
    return Population(devices, probes)


def _shifted(w: FeatureWindow, k: int) -> FeatureWindow:
    """The k-th request's copy of a probe window: later, and with values of its own.

    The server identifies a window by its feature values (replay protection), so each copy
    varies them by about 0.1 % (a person's own windows differ by far more), seeded by `k`.
    """
    values = np.asarray(w.values, dtype=float)
    varied = values * (1.0 + 1e-3 * np.random.default_rng(k).standard_normal(values.shape))
    return replace(w, start=w.start + 1000.0 * k, end=w.end + 1000.0 * k, values=varied)


def authorize_requests(pop: Population, n: int, *, tag: str = "") -> list[Prepared]:
    """`n` signed authorize requests with three-modality evidence, round-robin over users."""
    out = []
    tag = tag or uuid.uuid4().hex[:8]
    for k in range(n):
        dev = pop.devices[k % len(pop.devices)]
        probes = pop.probes[dev.user_id]
        pop.issued += 1
        evidence = [_shifted(w, pop.issued) for m in MODALITIES for w in evidence_unit(m, probes[m], k)]
        key = f"{tag}-{k}"
        payload = {"user_id": dev.user_id, "amount": "42.00", "currency": "EUR", "payee": "LOADTEST",
                   "channel": "app", "idempotency_key": key, "evidence": [w.to_dict() for w in evidence]}
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = sign_request(dev.key, dev.device_id, "POST", "/v1/transactions/authorize", body)
        headers["content-type"] = "application/json"
        out.append(Prepared("/v1/transactions/authorize", body, headers, key, dev.user_id))
    return out


def resign(p: Prepared, dev: DeviceClient) -> Prepared:
    """The same body with a fresh signature (a client retry after a lost answer)."""
    headers = sign_request(dev.key, dev.device_id, "POST", p.path, p.body)
    headers["content-type"] = "application/json"
    return replace(p, headers=headers)


@dataclass
class PhaseResult:
    latencies_ms: list[float]
    errors: int
    seconds: float
    responses: dict[str, dict[str, Any]]
    #: what the errors were: HTTP status codes or exception names, with counts
    error_kinds: dict[str, int] = field(default_factory=dict)
    #: the generator's connections per server process (`X-Cadence-Instance`), as opened
    connections: dict[str, int] = field(default_factory=dict)
    #: how late each request started on its schedule (the generator's timer and event loop: part of its latency)
    send_lateness_ms: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.latencies_ms)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def _run_phase(url: str, requests: list[Prepared] | None, *, rate: float, n: int, method: str = "POST",
                     trivial_path: str = "/v1/health", concurrency_cap: int = 32, timeout: float = 30.0,
                     responses: dict[str, dict[str, Any]] | None = None, spread: int = 1) -> PhaseResult:
    """Open-loop load: request i is sent at t0 + i/rate whatever the answers before it.

    Requests are serialised before the clock starts and go out over `concurrency_cap`
    persistent connections (`server.rawhttp`), so the generator spends little of the CPU
    it shares with the server; each goes to the server process with the fewest requests in
    flight, however the workers' accepts split the connections. Latency runs from each
    request's *scheduled* send time: waiting for a free connection behind a slow server
    counts (no coordinated omission). A request the generator's timer sent early (uvloop's
    timers have 1 ms resolution: sends came up to 0.9 ms early) runs from its actual send;
    timed from the schedule, a third of the no-op's latencies had read below zero.
    """
    if requests is None:
        raws = [raw_request("GET", url, trivial_path)] * n
    else:
        raws = [raw_request(method, url, p.path, p.body, p.headers) for p in requests[:n]]
    lat: list[float] = []
    lateness: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}
    live = responses is not None
    responses = {} if responses is None else responses
    bodies: list[tuple[str, bytes]] = []
    pool = ConnectionPool(url, concurrency_cap)
    await pool.warm(raw_request("GET", url, trivial_path), spread=spread)
    connections = dict(pool.instances())
    clock = time.perf_counter

    def fail(kind: str) -> None:
        nonlocal errors
        errors += 1
        kinds[kind] = kinds.get(kind, 0) + 1

    async def one(i: int, start: float) -> None:
        sent = clock()
        lateness.append((sent - start) * 1000.0)
        # from the schedule when the generator is late, from the send when its timer fired early
        since = min(start, sent)
        try:
            status, body = await pool.request(raws[i])
        except (OSError, ConnectionError) as exc:
            fail(type(exc).__name__)
            return
        lat.append((clock() - since) * 1000.0)
        if status >= 400:
            fail(_refusal(status, body))
        elif requests is not None:
            if live:  # the caller watches answers arrive (the crash test)
                responses[requests[i].key] = json.loads(body)
            else:
                bodies.append((requests[i].key, body))

    tasks = set()
    t0 = clock()
    for i in range(n):
        start = t0 + i / rate
        delay = start - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(i, start))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, late = await asyncio.wait(set(tasks), timeout=timeout)
        for task in late:
            task.cancel()
            fail("Timeout")
    seconds = clock() - t0
    pool.close()
    for key, body in bodies:  # parsed after the clock stopped
        responses[key] = json.loads(body)
    return PhaseResult(lat, errors, seconds, responses, kinds, connections, lateness)


def _refusal(status: int, body: bytes) -> str:
    """An error's kind for the report: the status, and the API's reason code when the body has one."""
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    return f"{status} {code}" if isinstance(code, str) and code.isprintable() and len(code) <= 64 else str(status)


def run_phase(url: str, requests: list[Prepared] | None, *, rate: float, n: int,
              responses: dict[str, dict[str, Any]] | None = None, spread: int = 1) -> PhaseResult:
    """Send `n` requests at `rate` per second; `responses` (if given) fills in as answers arrive.

    `spread`: the server's process count, for the connections to be spread over (`ConnectionPool.warm`).

    The generator's own garbage collector is paused for the phase: in the bench process (the
    CLI, scikit-learn and the enrolled population on the heap) a full collection took 50-70 ms,
    a pause of the client that would have been charged to the server as latency.
    """
    gc.collect()
    gc.freeze()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_run_phase(url, requests, rate=rate, n=n, responses=responses, spread=spread))
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()
