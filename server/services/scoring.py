"""Which scorer serves each modality.

In order: the registry's active model, the modality package's default, or (until the
package lands) the generic scaled-Manhattan detector.

Resolution is re-checked on every call, so a server started before a modality package or a
registry activation picks it up without a restart. With a registry the check reads the
modality's ACTIVE pointer and `stat`s the active version's files; the version's metadata is
read and parsed again only when one of them changed (doing so on every call, three times per
`authorize`, cost about ten times what the check does now). An ACTIVE that cannot be served
(it names a version that is not there, or is empty or damaged) is memoised the same way, and
why is logged once, when it is first seen.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

import numpy as np

from modalities.base import ModelVersionError, ScaledManhattan, Scorer, Template
from modalities.events import MODALITIES
from modalities.registry import ModelRegistry, RegistryError
from server.client.features import modality_package

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveScorer:
    """The scorer serving one modality and what it expects from incoming windows."""

    modality: str
    scorer: Scorer
    #: stable id of the model: "registry:v0003", "default:<scorer>", "fallback:manhattan-scaled"
    model_id: str
    #: expected feature version / dimension, None when any consistent version is accepted
    feature_version: str | None
    feature_dim: int | None


#: (inode, size, mtime in ns) per file, None for a missing one; None in all when one could not be read
Stamp = tuple[tuple[int, int, int] | None, ...] | None
#: a published version's files `ModelRegistry.get` reads
VERSION_FILES = ("model.npz", "meta.json", "metrics.json")


def stamp(paths: tuple[str, ...]) -> Stamp:
    """What identifies the content of `paths` without reading them (files are replaced, not edited)."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out.append(None)
            continue
        except OSError:
            return None
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ScorerProvider:
    """Resolves and caches the scorer per modality (thread-safe)."""

    def __init__(self, registry_root: Path | None) -> None:
        self.registry = ModelRegistry(registry_root) if registry_root is not None else None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], ActiveScorer] = {}
        self._warned: set[str] = set()
        self.templates = TemplateCache()
        #: modality -> (ACTIVE's bytes, the active version's files, their stamps, the answer)
        self._resolved: dict[str, tuple[bytes | None, tuple[str, ...], Stamp, str]] = {}
        self._pointers: dict[str, str] = {}
        #: modality -> why its ACTIVE is not served, as last logged (None: served, or no ACTIVE)
        self._unserved: dict[str, str | None] = {}

    def _key(self, modality: str) -> str:
        if self.registry is None:
            return self._package_key(modality)
        pointer = self._pointers.get(modality)
        if pointer is None:
            pointer = self._pointers[modality] = str(self.registry.root / modality / "ACTIVE")
        try:  # read on every call: the version it names is the answer, and it is a few bytes
            with open(pointer, "rb") as f:
                named: bytes | None = f.read(256)
        except FileNotFoundError:
            named = None
        except OSError:  # e.g. the registry path is a file: no memo, the registry says what is wrong
            return self._resolve_key(modality)
        if named is not None and len(named) >= 256:  # more than was read: no version name, read it whole
            return self._resolve_key(modality)
        memo = self._resolved.get(modality)
        if memo is not None and memo[0] == named and stamp(memo[1]) == memo[2]:
            # no registry model: the package's answer, asked again (a package may land while the server runs)
            return memo[3] if memo[3].startswith("registry:") else self._package_key(modality)
        version = (named or b"").decode("ascii", "replace").strip()
        root = self.registry.root / modality
        files = tuple(str(root / version / f) for f in VERSION_FILES) if version and "/" not in version else ()
        before = stamp(files)  # taken first: a version folder changed while resolving is seen next call
        key = self._resolve_key(modality, named)
        # the answer for exactly these ACTIVE bytes: kept until they, or the files of the version they name, change
        if before is not None and (key == f"registry:{version}" or not key.startswith("registry:")):
            self._resolved[modality] = (named, files, before, key)
        return key

    def _resolve_key(self, modality: str, named: bytes | None | EllipsisType = ...) -> str:
        """The key for ACTIVE's content `named` (None: no ACTIVE file; default: read it now)."""
        assert self.registry is not None
        why: str | None = None
        try:
            mv = self.registry.active(modality) if named is ... else self.registry.active_named(modality, named)
        except (RegistryError, OSError) as exc:
            mv, why = None, str(exc)
        else:
            if mv is None and named is not None and named is not ... and not named.strip():
                why = f"{self.registry.root / modality / 'ACTIVE'} is empty"
        self._note_unserved(modality, why)
        return f"registry:{mv.version}" if mv is not None else self._package_key(modality)

    def _note_unserved(self, modality: str, why: str | None) -> None:
        """Log why `modality`'s ACTIVE is not served, once per distinct reason (not on every request)."""
        if self._unserved.get(modality) == why:
            return
        self._unserved[modality] = why
        if why is not None:
            log.warning("%s: the registry's active model is not served (%s); the modality package's scorer serves "
                        "instead until `cadence models activate %s VERSION`", modality, why, modality)

    @staticmethod
    def _package_key(modality: str) -> str:
        pkg = modality_package(modality)
        if pkg is not None and hasattr(pkg, "default_scorer"):
            return "default"
        return "fallback"

    def get(self, modality: str) -> ActiveScorer:
        if modality not in MODALITIES:
            raise ValueError(f"modality: unknown {modality!r}")
        key = self._key(modality)
        with self._lock:
            hit = self._cache.get((modality, key))
            if hit is not None:
                return hit
            active = self._resolve(modality, key)
            self._cache[(modality, key)] = active
            return active

    def _resolve(self, modality: str, key: str) -> ActiveScorer:
        pkg = modality_package(modality)
        fv = getattr(pkg, "FEATURE_VERSION", None) if pkg else None
        dim = getattr(pkg, "FEATURE_DIM", None) if pkg else None
        if key.startswith("registry:") and self.registry is not None:
            version = key.split(":", 1)[1]
            try:
                scorer = self.registry.load(modality, version)
                log.info("%s: serving registry model %s (%s)", modality, version, scorer.name)
                return ActiveScorer(modality, scorer, key, scorer.feature_version or fv, dim)
            except (RegistryError, ModelVersionError, OSError) as exc:
                log.error("%s: active registry model %s cannot be loaded (%s); using the default", modality, version, exc)
                key = "default" if pkg is not None and hasattr(pkg, "default_scorer") else "fallback"
        if key == "default" and pkg is not None:
            scorer = pkg.default_scorer()
            log.info("%s: serving the package default scorer %s", modality, scorer.name)
            return ActiveScorer(modality, scorer, f"default:{scorer.name}:{scorer.version}", fv, dim)
        if modality not in self._warned:
            self._warned.add(modality)
            log.warning("%s: no modality package with default_scorer() yet; falling back to the generic "
                        "scaled-Manhattan scorer (accepts any consistent feature version)", modality)
        return ActiveScorer(modality, ScaledManhattan(), "fallback:manhattan-scaled", None, None)


class TemplateCache:
    """Decoded template arrays keyed by (template id, last update, model id), LRU-bounded.

    The key changes whenever the stored template does, so a hit is always current; each
    worker process keeps its own. An entry unused for `idle_s` is dropped (at the next
    `get`/`put`, or by `sweep`, which the app runs every minute): a template erased, withdrawn
    or purged, here or in another worker or by the CLI, is never used again, so its biometric
    arrays leave every worker's memory within that time instead of staying until a restart.
    """

    def __init__(self, maxsize: int = 20_000, idle_s: float = 600.0) -> None:
        self.maxsize, self.idle_s = maxsize, idle_s
        #: key -> (arrays, when last used: time.monotonic()); least recently used first
        self._d: OrderedDict[tuple[Any, ...], tuple[Template, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> int:
        """Drop the entries unused since `now - idle_s` (the oldest come first); the lock is held."""
        n, limit = 0, now - self.idle_s
        while self._d:
            key, (_, used) = next(iter(self._d.items()))
            if used > limit:
                break
            del self._d[key]
            n += 1
        return n

    def get(self, key: tuple[Any, ...]) -> Template | None:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            hit = self._d.get(key)
            if hit is None:
                return None
            self._d[key] = (hit[0], now)
            self._d.move_to_end(key)
            return hit[0]

    def put(self, key: tuple[Any, ...], value: Template) -> None:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            self._d[key] = (value, now)
            self._d.move_to_end(key)
            while len(self._d) > self.maxsize:
                self._d.popitem(last=False)

    def sweep(self) -> int:
        """Drop what has not been used for `idle_s`; returns how many entries went."""
        now = time.monotonic()
        with self._lock:
            return self._expire(now)

    def __len__(self) -> int:
        return len(self._d)


def template_to_json(t: Template) -> dict[str, list]:
    return {k: np.asarray(v).tolist() for k, v in t.items()}


def template_from_json(d: dict[str, list]) -> Template:
    return {k: np.asarray(v, dtype=float) for k, v in d.items()}
