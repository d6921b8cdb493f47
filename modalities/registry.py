"""Versioned model registry on the file system: federated training publishes, the server loads.

Layout (one folder per model version, never rewritten once published)::

    ROOT/<modality>/<version>/model.npz      # Scorer.save (no pickle)
    ROOT/<modality>/<version>/metrics.json   # what it was measured at, and on what
    ROOT/<modality>/<version>/MODEL_CARD.md  # who trained it on what, limits, intended use
    ROOT/<modality>/<version>/meta.json      # scorer name/version, source, created time
    ROOT/<modality>/ACTIVE                   # the version the server serves
    ROOT/.lock                               # activations take turns on it (flock)

Versions are ``v0001``, ``v0002``, ... so they sort in publication order. Publishing never
activates: a person (or `cadence models activate`) decides, and the audit log records it.
A version's files are written in a hidden ``ROOT/<modality>/.publishing-*`` folder, renamed
into place once complete: an interrupted publish leaves no folder that reads as a version.
What a publish that died left there is named by `problems` and removed by the next publish
once an hour old (`STALE_STAGING_S`).
"""

from __future__ import annotations

import builtins
import errno
import importlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modalities.base import ModelVersionError, Scorer
from modalities.events import MODALITIES

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: the registry's activation lock file, in its root (`ModelRegistry.lock`)
LOCK_FILE = ".lock"
_THREAD_LOCKS: dict[str, threading.Lock] = {}

#: modules whose scorer classes a published model may name; imported before loading one, since
#: a scorer's name resolves only once its class is defined (numpy-only modules: no torch here)
SCORER_MODULES = (
    "modalities.keystroke.detectors",
    "modalities.keystroke.learned",
    "modalities.touch.scorers",
    "modalities.gait.scorers",
    "federated.scorer",
)


def load_scorer(path: Path) -> Scorer:
    """`Scorer.load` with every scorer class defined, whatever this process imported before."""
    for name in SCORER_MODULES:
        importlib.import_module(name)
    return Scorer.load(path)


#: a version's folder name, ASCII digits only (`\d` also matches other scripts' digits, e.g. Arabic-Indic)
_VERSION_RE = re.compile(r"^v([0-9]{4,})$")
#: what `publish` writes last: a version without them was not published completely, and is never activated
_COMPLETE_FILES = ("meta.json", "MODEL_CARD.md")
#: the prefix of the hidden folder a version is written in before it is renamed into place
_PUBLISHING = ".publishing-"
#: a staging folder untouched this long was left by a publish that died (one takes seconds):
#: `problems` names it and the next `publish` of its modality removes it
STALE_STAGING_S = 3600.0


class RegistryError(ValueError):
    """Unknown modality or version, or a malformed registry folder.

    `str(exc)` may name the registry's paths (for the operator: CLI, logs); `public` says the
    same without them, for callers who must not learn the server's file system (the API).
    """

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = message if public is None else public


class RegistryLockError(RegistryError):
    """The registry's activation lock cannot be taken (its file cannot be opened)."""


def _read_json(path: Path) -> dict[str, Any]:
    """A version's JSON side file ({} when absent); a damaged one is a RegistryError naming it."""
    if not path.is_file():
        return {}
    where = f"{path.parent.parent.name} {path.parent.name}: {path.name}"  # without the registry's folder
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: not readable JSON ({exc}); republish this version or remove its folder",
                            public=f"{where} is not readable JSON; republish this version or remove its folder") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a JSON object; republish this version or remove its folder",
                            public=f"{where} is not a JSON object; republish this version or remove its folder")
    return data


class WrongModalityError(ModelVersionError):
    """A published version whose scorer or features belong to another modality (copied folder).

    A `ModelVersionError`: the version exists but this modality cannot serve it (API: 409).
    """


def _feature_version(modality: str) -> str | None:
    """The feature version the modality package computes (None: no package installed)."""
    try:
        pkg = importlib.import_module(f"modalities.{modality}")
    except ModuleNotFoundError:
        return None
    return getattr(pkg, "FEATURE_VERSION", None)


def check_belongs(modality: str, scorer: Scorer, meta_feature_version: str = "") -> None:
    """Refuse a scorer made for another modality (e.g. a copied folder): served, it refuses every window.

    Another modality's scorer class, or another modality's feature version, gives it away. An
    unknown feature version is let through (federated runs name their own).
    """
    made_for = getattr(scorer, "for_modality", None) or scorer.modality
    if made_for not in ("any", modality):
        raise WrongModalityError(f"{modality}: {scorer.name} is a {made_for} model, not a {modality} one")
    foreign = {fv: m for m in MODALITIES if m != modality and (fv := _feature_version(m))}
    for fv in (scorer.feature_version, meta_feature_version):
        if fv in foreign:
            raise WrongModalityError(f"{modality}: {scorer.name} reads {foreign[fv]} features ({fv!r}), not {modality} ones")


@dataclass(frozen=True)
class ModelVersion:
    """One published model: where it lives and what it claims."""

    modality: str
    version: str
    path: Path
    scorer: str
    scorer_version: str
    feature_version: str
    source: str
    created: str
    metrics: dict[str, Any] = field(default_factory=dict)
    active: bool = False


def _lock_error(path: Path, exc: OSError) -> RegistryLockError:
    """The lock file cannot be opened: named in full for the operator, as ROOT/.lock for the API."""
    reason = exc.strerror or str(exc)
    return RegistryLockError(f"cannot take the registry's lock {path}: {reason}",
                             public=f"cannot take the registry's lock (ROOT/{LOCK_FILE}): {reason}")


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise RegistryError(f"modality: unknown {modality!r}; expected one of {MODALITIES}")
    return modality


class ModelRegistry:
    """File-system registry of per-modality scorers (see module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ---------------------------------------------------------------------- writing
    def publish(self, modality: str, scorer: Scorer, *, metrics: dict[str, Any], card: str, source: str) -> str:
        """Store `scorer` as the next version of `modality` and return that version (not activated)."""
        _check_modality(modality)
        if not card.strip():
            raise RegistryError("card: a model card is required (what data, which subjects, limits)")
        json.dumps(metrics)  # refuse non-JSON metrics before anything is written
        check_belongs(modality, scorer)
        base = self.check_publishable(modality)
        import shutil
        import uuid

        staging = base / f"{_PUBLISHING}{uuid.uuid4().hex}"  # hidden: never listed, served or activated
        try:
            staging.mkdir()  # the default mode, as a version folder made in place would have
            scorer.save(staging / "model.npz")
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
            (staging / "MODEL_CARD.md").write_text(card)
            meta = {"scorer": scorer.name, "scorer_version": scorer.version, "feature_version": scorer.feature_version,
                    "source": source, "created": datetime.now(UTC).isoformat(timespec="seconds")}
            (staging / "meta.json").write_text(json.dumps(meta, indent=2))
            with self.lock():  # publishers take turns for the number: a rename never lands on another's folder
                self._remove_stale_staging(base, keep=staging)
                for _ in range(100):
                    version = f"v{self._next_number(modality):04d}"
                    target = base / version
                    if target.exists() or target.is_symlink():  # e.g. made by hand: rename would replace an empty one
                        continue
                    os.rename(staging, target)
                    break
                else:  # pragma: no cover
                    raise RegistryError(f"could not allocate a version under {base}")
        except OSError as exc:  # e.g. disk full: nothing that reads as a version is left to be activated
            shutil.rmtree(staging, ignore_errors=True)
            raise RegistryError(f"cannot publish to {base}: {exc.strerror or exc}",
                                public=f"cannot publish a {modality} model") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    @staticmethod
    def _stale_staging(base: Path) -> builtins.list[tuple[Path, float]]:
        """(folder, age in seconds) of each staging folder in `base` untouched for `STALE_STAGING_S`."""
        import time

        now, out = time.time(), []
        for p in sorted(base.glob(f"{_PUBLISHING}*")):
            try:
                age = now - p.stat().st_mtime
            except OSError:  # removed meanwhile
                continue
            if age >= STALE_STAGING_S and p.is_dir():
                out.append((p, age))
        return out

    def _remove_stale_staging(self, base: Path, *, keep: Path) -> None:
        """Delete what publishes that died left in `base` (a live publish's folder is younger)."""
        import shutil

        for p, age in self._stale_staging(base):
            if p != keep:
                log.warning("removing %s: left by a publish that stopped %.0f min ago", p, age / 60)
                shutil.rmtree(p, ignore_errors=True)

    def check_publishable(self, modality: str) -> Path:
        """``ROOT/<modality>`` as a folder a version can be published in (made if needed); else RegistryError.

        For callers that produce a model first (a federated run): check before the work.
        """
        _check_modality(modality)
        base = self.root / modality
        try:
            if base.exists() and not base.is_dir():
                raise RegistryError(f"{base} is not a folder (a damaged registry: move it away)",
                                    public=f"the {modality} registry folder is damaged")
            base.mkdir(parents=True, exist_ok=True)
            probe = base / f".cadence-write-test-{os.getpid()}-{threading.get_ident()}"  # per thread: publishers in one process
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RegistryError(f"cannot publish to {base}: {exc.strerror or exc}",
                                public=f"cannot publish a {modality} model") from exc
        pointer = base / "ACTIVE"
        if pointer.exists() and not pointer.is_file():
            raise RegistryError(f"{pointer} is not a file (a damaged registry: move it away)",
                                public=f"{modality} ACTIVE is damaged")
        return base

    def activate(self, modality: str, version: str) -> ModelVersion:
        """Point `modality`'s ACTIVE file at `version` (atomic replace); returns that version.

        Refuses what cannot be loaded or belongs to another modality. Holds the registry's lock
        for the switch; a caller that records the activation (audit log) uses `activation`, so
        that the record is made under the same lock.
        """
        with self.activation(modality, version) as mv:
            return mv

    @contextmanager
    def activation(self, modality: str, version: str) -> Iterator[ModelVersion]:
        """Activate `version` and hold the registry's lock until the block ends; undone if it raises.

        For an activation that is recorded: write (and commit) its audit entry inside the block.
        Activations, by server workers and the CLI alike, then take turns, so the records are in
        the order the ACTIVE file changed and the last one names the model that serves. When the
        block raises (the record could not be written), the previous ACTIVE is put back, so no
        activation stays unrecorded.
        """
        self.check(modality, version)  # loads the scorer: before the lock, which it does not need
        with self.lock():
            pointer = self.root / modality / "ACTIVE"
            if pointer.exists() and not pointer.is_file():  # e.g. a folder: os.replace cannot replace it
                raise RegistryError(f"{pointer} is not a file (a damaged registry: move it away, then activate "
                                    f"again)", public=f"{modality} ACTIVE is damaged")
            previous = pointer.read_bytes() if pointer.is_file() else None
            mv = self.get(modality, version)
            try:
                self._point(pointer, (version + "\n").encode())
            except OSError as exc:
                raise RegistryError(f"cannot write {pointer}: {exc.strerror or exc}",
                                    public=f"cannot activate a {modality} model") from exc
            try:
                yield replace(mv, active=True)
            except BaseException:
                if previous is None:
                    pointer.unlink(missing_ok=True)
                else:
                    self._point(pointer, previous)
                raise

    @staticmethod
    def _point(pointer: Path, content: bytes) -> None:
        """Replace `pointer` atomically. The temporary file is unique per call (threads of one server)."""
        from cadence.files import atomic_write

        atomic_write(pointer, content)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The registry's activation lock: a `flock` on `ROOT/.lock`, across processes and threads.

        Each call opens the file anew (flock belongs to the open file), so threads of one
        process exclude each other too. Not re-entrant: do not activate inside it.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover - no flock (Windows): threads of this process only
            with _THREAD_LOCKS.setdefault(str(self.root.resolve()), threading.Lock()):
                yield
            return
        path = self.root / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # made by another user (flock needs no write access)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise _lock_error(path, exc) from None
        except OSError as exc:
            raise _lock_error(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # ---------------------------------------------------------------------- reading
    def check(self, modality: str, version: str) -> ModelVersion:
        """`version` of `modality` if it could serve: published completely, loadable, made for this modality."""
        mv = self.get(modality, version)
        missing = self._missing_files(mv.path)
        if missing:
            raise RegistryError(f"version: {modality} {version} is incomplete (no {', '.join(missing)} in {mv.path}: an "
                                "interrupted publish?); it is not activated: publish the model again, and remove "
                                "this folder",
                                public=f"version: {modality} {version} is incomplete (no {', '.join(missing)}); "
                                       "publish the model again")
        check_belongs(modality, load_scorer(mv.path / "model.npz"), mv.feature_version)
        return mv

    @staticmethod
    def _missing_files(path: Path) -> list[str]:
        """The files `publish` writes that a version folder lacks (an interrupted publish of an older release)."""
        return [f for f in _COMPLETE_FILES if not (path / f).is_file()]

    def _next_number(self, modality: str) -> int:
        nums = [int(m.group(1)) for p in (self.root / modality).iterdir() if (m := _VERSION_RE.match(p.name))]
        return max(nums, default=0) + 1

    def _active_name(self, modality: str) -> str | None:
        """The version `modality`'s ACTIVE file names (None: none); RegistryError when it names none readably."""
        pointer = self.root / modality / "ACTIVE"
        if not pointer.is_file():
            return None
        try:
            raw = pointer.read_bytes()
        except OSError as exc:
            raise self._bad_pointer(modality, exc) from exc
        return self._parse_active(modality, raw)

    def _bad_pointer(self, modality: str, exc: Exception) -> RegistryError:
        fix = f"`cadence models activate {modality} VERSION` rewrites it"
        return RegistryError(f"{self.root / modality / 'ACTIVE'}: not a version name ({exc}); {fix}",
                             public=f"{modality} ACTIVE is not a version name; {fix}")

    def _parse_active(self, modality: str, raw: bytes) -> str | None:
        """The version an ACTIVE file holding `raw` names (None: empty); RegistryError when it names none readably."""
        pointer = self.root / modality / "ACTIVE"
        fix = f"`cadence models activate {modality} VERSION` rewrites it"
        try:
            name = raw.decode("ascii").strip()
        except UnicodeDecodeError as exc:
            raise self._bad_pointer(modality, exc) from exc
        if name and not _VERSION_RE.match(name):
            raise RegistryError(f"{pointer}: {name[:40]!r} is not a version name; {fix}",
                                public=f"{modality} ACTIVE is not a version name; {fix}")
        return name or None

    def _is_active(self, modality: str, version: str) -> bool:
        """Whether ACTIVE names `version`; a damaged ACTIVE names none (so `activate` can rewrite it)."""
        try:
            return self._active_name(modality) == version
        except RegistryError:
            return False

    def get(self, modality: str, version: str) -> ModelVersion:
        """A published version; RegistryError (never OSError) when it is unknown or cannot be read."""
        _check_modality(modality)
        if not _VERSION_RE.match(version or ""):
            raise RegistryError(f"version: malformed {version!r} (expected like v0001)")
        path = self.root / modality / version
        unknown = RegistryError(f"version: {modality} {version} is not in the registry at {self.root}",
                                public=f"version: {modality} {version} is not in the registry")
        try:
            if not (path / "model.npz").is_file():
                raise unknown
            meta, metrics = _read_json(path / "meta.json"), _read_json(path / "metrics.json")
            active = self._is_active(modality, version)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # a name no folder here can have (v followed by 300 digits)
                raise unknown from None
            raise RegistryError(f"version: {modality} {version}: cannot read {path}: {exc.strerror or exc}",
                                public=f"version: {modality} {version} cannot be read on the server "
                                       f"({exc.strerror or type(exc).__name__})") from exc
        for key in ("scorer", "scorer_version", "feature_version", "source", "created"):
            if not isinstance(meta.get(key, ""), str):
                raise RegistryError(f"{path / 'meta.json'}: {key} must be a string, not {type(meta[key]).__name__}; "
                                    "republish this version or remove its folder",
                                    public=f"{modality} {version}: meta.json {key} must be a string; republish this "
                                           "version or remove its folder")
        return ModelVersion(modality=modality, version=version, path=path, scorer=meta.get("scorer", "?"),
                            scorer_version=meta.get("scorer_version", "?"),
                            feature_version=meta.get("feature_version", ""), source=meta.get("source", ""),
                            created=meta.get("created", ""), metrics=metrics, active=active)

    def list(self, modality: str | None = None, *, damaged: list[str] | None = None) -> list[ModelVersion]:
        """Every published version (of one modality or all), oldest first.

        A version folder that cannot be read is left out (logged, and its reason appended to
        `damaged` when given), so one damaged folder does not hide the others. So is a damaged
        `ACTIVE` file's reason (no version is then marked active, and the server refuses to load one).
        """
        mods = [_check_modality(modality)] if modality else list(MODALITIES)
        out: list[ModelVersion] = []

        def left_out(why: object) -> None:
            log.warning("%s", why)
            if damaged is not None:
                damaged.append(str(why))

        for m in mods:
            d = self.root / m
            if not d.is_dir():
                continue
            try:
                self._active_name(m)
            except RegistryError as exc:
                left_out(exc)
            for p in sorted(d.iterdir()):
                if not _VERSION_RE.match(p.name):
                    continue
                if not (p / "model.npz").is_file():  # a version's name, but nothing the server could load
                    left_out(f"{m} {p.name}: no model.npz in {p} (a damaged or interrupted publish): publish the "
                             "model again, and remove this folder")
                    continue
                try:
                    out.append(self.get(m, p.name))
                except RegistryError as exc:
                    left_out(exc)
        return out

    def problems(self, modality: str | None = None) -> builtins.list[str]:
        """What keeps a modality's ACTIVE from being served, or a listed version from being activated.

        An ACTIVE naming a version that is not there (moved away, no model.npz) or an empty one:
        the server serves the package default instead. A version without the files `publish`
        writes last (an interrupted publish): `activate` refuses it. A staging folder that a publish
        which died left behind (`STALE_STAGING_S`). (A malformed ACTIVE and unreadable versions are
        `list`'s `damaged`.)
        """
        mods = [_check_modality(modality)] if modality else list(MODALITIES)
        out: list[str] = []
        for m in mods:
            d = self.root / m
            if not d.is_dir():
                continue
            pointer = d / "ACTIVE"
            fix = f"`cadence models activate {m} VERSION` rewrites it"
            try:
                name = self._active_name(m)
            except RegistryError:
                name = None  # named by `list`
            else:
                if pointer.exists() and not pointer.is_file():  # e.g. a folder: read as no ACTIVE, so say it
                    out.append(f"{pointer} is not a file (a damaged registry): no {m} model is active, the server "
                               f"serves the package default; move it away, then {fix}")
                elif name is None and pointer.is_file():
                    out.append(f"{pointer} is empty: no {m} model is active, the server serves the package default; "
                               f"{fix}")
            if name is not None and not (d / name / "model.npz").is_file():
                out.append(f"{pointer} names {name}, which is not in the registry (no {name}/model.npz): the server "
                           f"serves the package default; {fix}")
            for p, age in self._stale_staging(d):
                out.append(f"{p} was left by a publish that stopped {age / 3600:.1f} h ago (never listed or "
                           f"served): the next publish of {m} removes it, or remove it")
            for p in sorted(d.iterdir()):
                if _VERSION_RE.match(p.name) and (p / "model.npz").is_file() and (missing := self._missing_files(p)):
                    served = " (ACTIVE names it, so it is served until another version is activated)" \
                        if p.name == name else ""
                    out.append(f"{m} {p.name} is incomplete (no {', '.join(missing)}: an interrupted publish?): "
                               f"`activate` refuses it{served}; publish the model again, and remove this folder")
        return out

    def active(self, modality: str) -> ModelVersion | None:
        _check_modality(modality)
        name = self._active_name(modality)
        return self.get(modality, name) if name else None

    def active_named(self, modality: str, raw: bytes | None) -> ModelVersion | None:
        """`active`, for an ACTIVE file the caller read already (`raw`; None: no ACTIVE file).

        The answer is about those bytes, whatever the file holds by now (a caller memoising it
        keys the memo on them).
        """
        _check_modality(modality)
        name = self._parse_active(modality, raw) if raw is not None else None
        return self.get(modality, name) if name else None

    def load(self, modality: str, version: str | None = None) -> Scorer:
        """Load a version's scorer (default: the active one)."""
        if version is None:
            mv = self.active(modality)
            if mv is None:
                raise RegistryError(f"version: no active {modality} model in {self.root}")
            version = mv.version
        mv = self.get(modality, version)
        scorer = load_scorer(mv.path / "model.npz")
        check_belongs(modality, scorer, mv.feature_version)  # e.g. ACTIVE set before this check existed
        return scorer
