"""A SuperNode that runs Cadence's SecAgg+ app and nothing else (`cadence federated supernode --secagg-only`).

Flower's SuperNode runs the code of whatever app (FAB) a run ships: a FAB may carry Python
files of its own, which Flower installs and runs with this device's data at hand, whatever
our ClientApps check. So `--secagg-only` also pins the app itself. The SuperNode starts as
``python -m federated.pinned_app supernode BIN flower-supernode ...``, which writes into BIN
one launcher per program Flower's SuperExec starts by name (``TASK_TYPE_TO_COMMAND``:
``flwr-clientapp``, ``flwr-agentapp``, ...), checks that each is the one found first on the
new PATH and runs (`self_test`; a launcher that cannot run, on a ``noexec`` mount say, would
let the search fall through to Flower's own), then execs the SuperNode with BIN first on its
PATH. Every launcher but ``flwr-clientapp`` refuses (a run can ask for an agent task: Flower
would install and import its FAB's code). ``flwr-clientapp`` looks at each run's FAB before
Flower installs or loads it (`check_run`) and refuses it unless it holds only its
``pyproject.toml`` (the code is the installed `federated` package), is Cadence's SecAgg+ app
by publisher, name and ClientApp, and the run names the app the FAB is. A refused run gets an
error reply naming why (`AppRefused`); each decision is a line in ``pinned-apps.log`` next to
BIN, for the device's owner.

What this does not stop: a server that follows the published app's messages but deviates
from the SecAgg+ protocol (`secagg.unmask_guard` refuses the plainest such request), and the
scaling round's summary (disclosed). docs/federated.md, "What this relies on".
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

#: the one ClientApp a secagg-only SuperNode runs, and the app it belongs to (federated/app-secagg)
PINNED_CLIENTAPP = "federated.secagg:client_app"
PINNED_PUBLISHER = "cadence"
PINNED_NAME = "cadence-federated-secagg"
#: what a FAB of that app holds: its pyproject and Flower's own listing of the files
ALLOWED_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
#: the programs Flower's SuperExec starts by name (flwr.supercore.constant.TASK_TYPE_TO_COMMAND)
TASK_COMMANDS = ("flwr-clientapp", "flwr-agentapp", "flwr-serverapp", "flwr-simulation", "flwr-model",
                 "flwr-connector")
LOG_NAME = "pinned-apps.log"
LOCK_NAME = ".lock"
SELF_TEST = "--cadence-pinned-self-test"
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


class AppRefused(RuntimeError):
    """A run's app is not Cadence's SecAgg+ app as published (files of its own, another app or ClientApp)."""


def check_fab(content: bytes) -> tuple[str, str]:
    """Refuse a FAB that could run anything but the installed `PINNED_CLIENTAPP`; returns its (fab id, version)."""
    refused = "this device runs Cadence's SecAgg+ app only; this run's app"
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as z:
            extra = sorted(set(z.namelist()) - ALLOWED_FILES)
            if extra:
                raise AppRefused(f"{refused} carries files of its own ({', '.join(extra[:5])}"
                                 f"{', ...' if len(extra) > 5 else ''})")
            doc = tomllib.loads(z.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AppRefused(f"{refused} is unreadable ({exc})") from exc
    app = doc.get("tool", {}).get("flwr", {}).get("app", {})
    clientapp = app.get("components", {}).get("clientapp")
    if clientapp != PINNED_CLIENTAPP:
        raise AppRefused(f"{refused} names {clientapp!r}, not {PINNED_CLIENTAPP} (start the run with "
                         f"`cadence federated run --secagg`)")
    project = doc.get("project", {})
    publisher, name, version = app.get("publisher"), project.get("name"), str(project.get("version", ""))
    if (publisher, name) != (PINNED_PUBLISHER, PINNED_NAME) or not _SAFE.match(version) or ".." in version:
        raise AppRefused(f"{refused} is {publisher!r}/{name!r} version {version!r}, not "
                         f"{PINNED_PUBLISHER}/{PINNED_NAME} with a plain version")
    return f"{publisher}/{name}", version


def check_run(fab: Any, run: Any) -> None:
    """`check_fab`, and the run names the app the FAB is: Flower loads the folder named by the run's id and version."""
    fab_id, version = check_fab(fab.content)
    if (str(run.fab_id), str(run.fab_version)) != (fab_id, version):
        raise AppRefused(f"this run names app {run.fab_id!r} version {run.fab_version!r}, but its FAB is {fab_id} "
                         f"version {version}")
    from flwr.common.config import get_project_dir

    folder = get_project_dir(fab_id, version, fab.hash_str)
    if folder.exists():  # installed before (by an earlier run, or before the pin): it must hold this FAB only
        files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        if not files <= ALLOWED_FILES or (folder / "pyproject.toml").read_bytes() != _pyproject(fab.content):
            raise AppRefused(f"the installed app folder {folder.name} holds other files than this run's app")


def _pyproject(content: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        return z.read("pyproject.toml")


def _log(bin_dir: Path, line: str) -> None:
    try:
        with open(bin_dir.parent / LOG_NAME, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
    except OSError:  # the decision stands whether or not it could be written down
        pass


def clientapp(bin_dir: Path, args: list[str]) -> None:
    """`flwr-clientapp`, with each run's FAB checked (`check_run`) before Flower installs or loads it.

    Flower's runner pulls the task (message, run, FAB), then installs the FAB, then loads and
    calls the ClientApp. The check runs in place of the install (the task is pulled by then),
    so a refusal becomes Flower's error reply to the server, naming why, at once.
    """
    import flwr.supernode.runtime.run_clientapp as runner
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    pull, install = runner.pull_task_input, runner.install_from_fab
    pulled: dict[str, Any] = {}

    def pulling(client: Any) -> Any:
        message, context, run, fab = pull(client)
        pulled.update(run=run, fab=fab)
        return message, context, run, fab

    def checked_install(content: bytes, *a: Any, **k: Any) -> Any:
        run, fab = pulled.get("run"), pulled.get("fab")
        if run is None or fab is None or fab.content is not content:  # only the FAB just pulled, and checked
            raise AppRefused("this device installs only the app of the task it pulled")
        try:
            check_run(fab, run)
        except AppRefused as exc:
            _log(bin_dir, f"refused run {run.run_id} app {fab.hash_str[:16]}: {exc}")
            raise
        _log(bin_dir, f"accepted run {run.run_id} app {fab.hash_str[:16]} ({PINNED_CLIENTAPP})")
        return install(content, *a, **k)

    # run_clientapp looks both up when it runs: the check comes before anything of the FAB is installed or loaded
    runner.pull_task_input, runner.install_from_fab = pulling, checked_install  # type: ignore[assignment]
    sys.argv = [str(bin_dir / "flwr-clientapp"), *args]  # Flower reads its own name and options from argv
    flwr_clientapp()


def refuse_task(bin_dir: Path, command: str) -> None:
    """Every program but flwr-clientapp: a run asking for it (an agent app, say) would run its own code."""
    _log(bin_dir, f"refused a {command} task: this device runs Cadence's SecAgg+ ClientApp only")
    print(f"error: {command}: this SuperNode runs Cadence's SecAgg+ ClientApp only", file=sys.stderr)
    raise SystemExit(1)


def install_launchers(bin_dir: Path) -> Path:
    """Write one launcher per `TASK_COMMANDS` into BIN (owner-only, executable every time); returns BIN.

    Several SuperNodes of one workdir share BIN and may start at once: the work is done under
    an exclusive lock on ``BIN/.lock`` (another's half-written launcher is never taken for a
    stranger's file and removed).
    """
    import fcntl

    bin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if bin_dir.stat().st_uid != os.getuid():  # first on the SuperNode's PATH: nobody else may put programs there
        raise SystemExit(f"error: --secagg-only: {bin_dir} belongs to another user; remove it or choose another "
                         f"--workdir")
    os.chmod(bin_dir, stat.S_IRWXU)  # every start: a folder made earlier with looser modes is tightened
    with open(bin_dir / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for entry in bin_dir.iterdir():  # only the launchers: e.g. a planted flower-superexec would run first
            if entry.name not in (*TASK_COMMANDS, LOCK_NAME):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        python = shlex.quote(sys.executable)  # a path with spaces cannot be a #! line: /bin/sh runs it instead
        for command in TASK_COMMANDS:
            path = bin_dir / command
            script = (f"#!/bin/sh\nexec {python} -m federated.pinned_app {command} {shlex.quote(str(bin_dir))} "
                      f'"$@"\n')
            if not path.is_file() or path.read_text() != script:
                tmp = path.with_suffix(".new")
                tmp.write_text(script)
                os.replace(tmp, path)
            os.chmod(path, stat.S_IRWXU)  # every time: a launcher that cannot run is skipped by the PATH search
    return bin_dir


def self_test(bin_dir: Path, path: str) -> None:
    """Each launcher is the one found first on `path`, and runs; raises SystemExit naming what fails."""
    for command in TASK_COMMANDS:
        found = shutil.which(command, path=path)
        if found is None or Path(found).resolve() != (bin_dir / command).resolve():
            raise SystemExit(f"error: --secagg-only: {command} resolves to {found}, not {bin_dir / command}")
        try:
            out = subprocess.run([str(bin_dir / command), SELF_TEST], capture_output=True, text=True, timeout=60)
        except OSError as exc:  # e.g. BIN on a noexec mount: Flower would fall through to its own program
            raise SystemExit(f"error: --secagg-only: {bin_dir / command} cannot run ({exc.strerror or exc}); "
                             f"give the SuperNode a --workdir on a file system that allows programs") from exc
        if out.returncode != 0 or out.stdout.strip() != f"pinned {command}":
            raise SystemExit(f"error: --secagg-only: {bin_dir / command} does not run as it should "
                             f"(exit {out.returncode}: {(out.stderr or out.stdout).strip()[-300:]})")


def supernode(bin_dir: Path, cmd: list[str]) -> None:
    """Exec `cmd` (flower-supernode) with BIN's launchers first on PATH, once they are checked.

    Exec, not a child: the SuperNode keeps this process (its pid, its signals, its group).
    """
    install_launchers(bin_dir)
    path = f"{bin_dir.resolve()}{os.pathsep}{os.environ.get('PATH', '')}"
    self_test(bin_dir, path)
    os.environ["PATH"] = path
    os.execv(cmd[0], cmd)


def main(argv: list[str]) -> None:
    """``supernode BIN CMD...`` (the SuperNode) or ``COMMAND BIN ARGS...`` (a launcher in BIN)."""
    if len(argv) < 2:
        raise SystemExit("usage: python -m federated.pinned_app supernode BIN flower-supernode [ARGS...]")
    what, bin_dir, rest = argv[0], Path(argv[1]), argv[2:]
    if what == "supernode":
        if not rest:
            raise SystemExit("usage: python -m federated.pinned_app supernode BIN flower-supernode [ARGS...]")
        try:
            supernode(bin_dir, rest)
        except OSError as exc:  # one line, not a traceback: the SuperNode does not start
            raise SystemExit(f"error: --secagg-only: cannot set up {bin_dir} ({exc.strerror or exc})") from exc
    elif what in TASK_COMMANDS:
        if rest == [SELF_TEST]:
            print(f"pinned {what}")
        elif what == "flwr-clientapp":
            clientapp(bin_dir, rest)
        else:
            refuse_task(bin_dir, what)
    else:
        raise SystemExit(f"federated.pinned_app: unknown {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
