"""Run the Flower apps on the simulation engine (Ray), one virtual SuperNode per device file.

Used by the federated bench and the tests. Ray is started with `num_cpus` CPUs and one CPU
per client, its dashboard off, and always shut down afterwards.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from federated.config import RunSettings
from federated.orchestration import FederatedRunError, RunOutcome

log = logging.getLogger(__name__)


def simulate(settings: RunSettings, feature_dir: str | os.PathLike[str], *, num_cpus: int = 2,
             verbose: bool = False) -> RunOutcome:
    """Train with every ``device-*.npz`` in `feature_dir` as one virtual device."""
    return simulate_many([settings], feature_dir, num_cpus=num_cpus, verbose=verbose)[0]


def simulate_many(runs: Sequence[RunSettings], feature_dir: str | os.PathLike[str], *, num_cpus: int = 2,
                  verbose: bool = False) -> list[RunOutcome]:
    """Several trainings, one after the other, in ONE simulation (Ray and the devices start once).

    Starting Ray and its actors (each imports Flower) costs more than a short run
    on a shared 2-core machine, so the bench trains FedAvg and DP-FedAvg in the same session.
    """
    if not runs:
        raise ValueError("runs: give at least one RunSettings")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from federated import client_app, server_app

    n = len(sorted(Path(feature_dir).glob("device-*.npz")))
    need = max(r.min_nodes for r in runs)
    if n < need:
        raise FederatedRunError(f"feature-dir: {n} device files in {feature_dir}, need min-nodes={need}")
    results: list[RunOutcome] = []
    sapp = server_app.make_app({}, on_result=results.append, runs=[r.as_config() for r in runs])
    capp = client_app.make_app({"feature-dir": str(Path(feature_dir).resolve())})
    backend = _backend(num_cpus)
    try:
        with stop_on_interrupt():
            run_simulation(server_app=sapp, client_app=capp, num_supernodes=n, backend_config=backend,
                           verbose_logging=verbose)
    finally:
        shutdown_ray()
    if len(results) != len(runs):
        raise FederatedRunError(f"simulation ended with {len(results)} of {len(runs)} results (see the log above)")
    return results


#: how long an interrupted simulation waits for Ray to shut down before the process exits anyway
STOP_GRACE_S = 10.0


@contextmanager
def stop_on_interrupt() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a simulation: shut Ray down and exit (130 / 143), within seconds.

    Flower's simulation runs its ServerApp in a thread and Ray in processes of its own; an
    interrupt that lands while they start was swallowed, or left the command waiting forever
    (on that thread) and Ray's agents running. So the handler stops the processes started
    inside this block (Ray's; none started before it), runs the exit handlers (temporary
    folders of feature files are removed), and exits without waiting for the thread. Nothing
    is written before a simulation ends, so no partial results are left. Only the main
    thread takes signals (elsewhere this does nothing).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}

    def stop(signum: int, _frame: Any) -> None:
        log.warning("interrupted: stopping the simulation and Ray")
        # Ray's processes, found before its shutdown orphans them (an interrupt during
        # `ray.init` left its agents running under init, where nothing would stop them)
        spawned = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        _bounded(shutdown_ray)
        for proc in spawned:
            try:
                proc.kill()
            except psutil.Error:  # gone already
                pass
        # finalizers first (TemporaryDirectory's: the bench's feature files), then the other exit
        # handlers (Ray's own may block: each step is bounded)
        _bounded(weakref.finalize._exitfunc)  # type: ignore[attr-defined]
        _bounded(atexit._run_exitfuncs)
        os._exit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _bounded(fn: Any) -> None:
    """Run `fn` for at most STOP_GRACE_S (in a daemon thread: an exit must not hang on it)."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(STOP_GRACE_S)


def shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:  # pragma: no cover
        pass


def simulate_secagg(settings: RunSettings, feature_dir: str | os.PathLike[str], *, num_cpus: int = 2):  # type: ignore[no-untyped-def]
    """The SecAgg+ app (`federated/secagg.py`) on the simulation engine; returns the global scorer."""
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from flwr.simulation import run_simulation

    from federated import secagg

    n = len(sorted(Path(feature_dir).glob("device-*.npz")))
    results: list = []
    cfg = {**settings.as_config(), "feature-dir": str(Path(feature_dir).resolve())}
    backend = _backend(num_cpus)
    try:
        with stop_on_interrupt():
            run_simulation(server_app=secagg.make_server_app(cfg, on_result=results.append),
                           client_app=secagg.make_client_app(cfg), num_supernodes=n, backend_config=backend)
    finally:
        shutdown_ray()
    if not results:
        raise FederatedRunError("SecAgg+ simulation ended without a result")
    return results[0].scorer


def _backend(num_cpus: int) -> dict[str, dict[str, Any]]:
    """Ray backend: one CPU per ClientApp actor, `num_cpus` in all, no GPU, no dashboard."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False}}
