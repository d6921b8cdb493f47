"""A SuperNode that runs Cadence's SecAgg+ app and nothing else (`cadence federated supernode --secagg-only`).

Flower's SuperNode runs the code of whatever app (FAB) a run ships: a FAB may carry Python
files of its own, which `flwr-clientapp` installs and runs with this device's data at hand,
whatever our ClientApps check. So `--secagg-only` also pins the app itself: the SuperNode is
started with a `flwr-clientapp` of ours first on its PATH (Flower starts its ClientApp
processes by that name), which looks at each run's FAB before anything of it is installed or
loaded and refuses it unless it holds only its `pyproject.toml` (the code is the installed
`federated` package) and names `PINNED_CLIENTAPP` as its ClientApp. A refused run gets an
error reply naming why (`AppRefused`); each decision is a line in ``pinned-apps.log`` next to
the launcher, for the device's owner.

What this does not stop: a server that follows the published app's messages but deviates
from the SecAgg+ protocol (`secagg.unmask_guard` refuses the plainest such request), and the
scaling round's summary (disclosed). docs/federated.md, "What this relies on".
"""

from __future__ import annotations

import io
import os
import stat
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

#: the one ClientApp a secagg-only SuperNode runs
PINNED_CLIENTAPP = "federated.secagg:client_app"
#: what a FAB of that app holds: its pyproject and Flower's own listing of the files
ALLOWED_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
LOG_NAME = "pinned-apps.log"


class AppRefused(RuntimeError):
    """A run's app is not Cadence's SecAgg+ app as published (files of its own, another ClientApp)."""


def check_fab(content: bytes) -> None:
    """Refuse a FAB that could run anything but the installed `PINNED_CLIENTAPP` (raises `AppRefused`)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as z:
            names = set(z.namelist())
            extra = sorted(names - ALLOWED_FILES)
            if extra:
                raise AppRefused(f"this device runs Cadence's SecAgg+ app only; this run's app carries files of "
                                 f"its own ({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})")
            doc = tomllib.loads(z.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AppRefused(f"this device runs Cadence's SecAgg+ app only; this run's app is unreadable ({exc})") from exc
    clientapp = doc.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {}).get("clientapp")
    if clientapp != PINNED_CLIENTAPP:
        raise AppRefused(f"this device runs Cadence's SecAgg+ app only ({PINNED_CLIENTAPP}); this run's app names "
                         f"{clientapp!r} (start the run with `cadence federated run --secagg`)")


def _log(bin_dir: Path, line: str) -> None:
    try:
        with open(bin_dir.parent / LOG_NAME, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
    except OSError:  # the decision stands whether or not it could be written down
        pass


def clientapp() -> None:
    """`flwr-clientapp`, with each run's FAB checked (`check_fab`) before Flower installs or loads it."""
    import flwr.supernode.runtime.run_clientapp as runner
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    pull = runner.pull_task_input
    bin_dir = Path(sys.argv[0]).resolve().parent

    def pinned_pull(client: Any) -> Any:
        message, context, run, fab = pull(client)
        try:
            check_fab(fab.content)
        except AppRefused as exc:
            _log(bin_dir, f"refused run {run.run_id} app {fab.hash_str[:16]}: {exc}")
            raise
        _log(bin_dir, f"accepted run {run.run_id} app {fab.hash_str[:16]} ({PINNED_CLIENTAPP})")
        return message, context, run, fab

    runner.pull_task_input = pinned_pull  # run_clientapp looks it up when it runs: the check comes first
    flwr_clientapp()


def install_launcher(bin_dir: Path) -> Path:
    """Write ``BIN_DIR/flwr-clientapp`` (owner-only, this Python) that runs `clientapp`; returns the folder."""
    bin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = bin_dir / "flwr-clientapp"
    script = f"#!{sys.executable}\nfrom federated.pinned_app import clientapp\n\nclientapp()\n"
    if not path.is_file() or path.read_text() != script:
        tmp = path.with_suffix(".new")
        tmp.write_text(script)
        os.chmod(tmp, stat.S_IRWXU)
        os.replace(tmp, path)
    return bin_dir


def supernode() -> None:
    """``python -m federated.pinned_app BIN_DIR flower-supernode ARGS...``: exec it with BIN_DIR first on PATH.

    Exec, not a child: the SuperNode keeps this process (its pid, its signals, its group).
    """
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m federated.pinned_app BIN_DIR flower-supernode [ARGS...]")
    bin_dir = install_launcher(Path(sys.argv[1]))
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    supernode()
