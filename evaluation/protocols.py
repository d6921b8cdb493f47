"""Evaluation protocols shared by every modality.

* Anything learned from a population is trained on some subjects and evaluated on others:
  `resolve_folds` gives k-fold splits by subject within one folder, or train-on-A /
  evaluate-on-B for explicit folders.
* Per subject, enrolment uses the earliest part of the data and tests the rest
  (`chronological_split`).
* Impostors are zero-effort: other evaluation subjects' test windows (`zero_effort_trials`).
* Scores are a file contract (`ScoreTable` CSV) that fusion and reports read.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.datasets import (
    DatasetError,
    available_subjects,
    data_folder,
    duplicate_content,
    no_subjects_hint,
    shared_content,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One subject-disjoint split: learn from `train_subjects`, evaluate on `eval_subjects`."""

    index: int
    train_dir: Path
    train_subjects: tuple[int, ...]
    eval_dir: Path
    eval_subjects: tuple[int, ...]
    #: caveats a report must carry (e.g. subject ids in both folders with different files)
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # in two folders too: an id names a person (`training_apart`)
        overlap = set(self.train_subjects) & set(self.eval_subjects)
        if overlap:
            raise ValueError(f"fold {self.index}: subjects in both train and eval: {sorted(overlap)[:10]}")


def subject_folds(subjects: Sequence[int], k: int = 2, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """k-fold split of `subjects` (shuffled with `seed`): [(train, eval), ...]."""
    subs = np.array(sorted(set(int(s) for s in subjects)))
    if subs.size < 2 * max(k, 1) and k > 1:
        raise ValueError(f"need at least {2 * k} subjects for {k}-fold, got {subs.size}")
    perm = np.random.default_rng(seed).permutation(subs)
    parts = np.array_split(perm, k)
    out = []
    for j in range(k):
        ev = sorted(int(s) for s in parts[j])
        tr = sorted(int(s) for p, part in enumerate(parts) if p != j for s in part)
        out.append((tr, ev))
    return out


def resolve_folds(
    kind: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    train_dir: str | os.PathLike[str] | None = None,
    eval_dir: str | os.PathLike[str] | None = None,
    k: int = 2,
    seed: int = 0,
    max_subjects: int | None = None,
) -> list[Fold]:
    """Folds for a bench: explicit ``train_dir``/``eval_dir`` or k-fold within ``data_dir``.

    With both folders given, every subject of the first trains and every subject of the
    second is evaluated (one fold); if they are the same folder, k-fold is used instead.
    `max_subjects` keeps a seeded subset of subjects per folder (``--quick``).
    """

    def pick(folder: Path, subs: list[int], salt: int) -> list[int]:
        if max_subjects is None or len(subs) <= max_subjects:
            return subs
        rng = np.random.default_rng(seed + salt)
        return sorted(int(s) for s in rng.choice(subs, size=max_subjects, replace=False))

    if train_dir is not None or eval_dir is not None:
        if train_dir is None or eval_dir is None:
            raise ValueError("--train-dir and --eval-dir go together")
        tr_dir, ev_dir = Path(train_dir), Path(eval_dir)
        for label, d in (("--train-dir", tr_dir), ("--eval-dir", ev_dir)):
            data_folder(d, label)
        if tr_dir.resolve() != ev_dir.resolve():
            tr = pick(tr_dir, available_subjects(tr_dir, kind), 1)
            ev = pick(ev_dir, available_subjects(ev_dir, kind), 2)
            if not tr:
                raise DatasetError(f"no {kind} subjects in --train-dir {tr_dir}: {no_subjects_hint(kind)}")
            if not ev:
                raise DatasetError(f"no {kind} subjects in --eval-dir {ev_dir}: {no_subjects_hint(kind)}")
            if len(ev) < 2:
                raise DatasetError(f"--eval-dir {ev_dir} has one {kind} subject ({ev[0]}): impostor trials need "
                                   "at least 2 evaluation subjects")
            warnings = check_disjoint(kind, tr_dir, tr, ev_dir, ev)
            tr = training_apart(kind, tr_dir, tr, ev)
            return [Fold(0, tr_dir, tuple(tr), ev_dir, tuple(ev), warnings)]
        data_dir = tr_dir
    if data_dir is None:
        raise ValueError("give --data-dir (or CADENCE_DATA_DIR), or --train-dir and --eval-dir")
    folder = data_folder(data_dir)
    subs = pick(folder, available_subjects(folder, kind), 0)
    if not subs:
        raise DatasetError(f"no {kind} subjects in {folder}: {no_subjects_hint(kind)}")
    check_distinct(kind, folder, "--data-dir" if train_dir is None else "--train-dir (= --eval-dir)")
    try:
        splits = subject_folds(subs, k, seed)
    except ValueError as exc:
        raise ValueError(f"{exc} ({kind} subjects in {folder})") from None
    return [Fold(j, folder, tuple(tr), folder, tuple(ev)) for j, (tr, ev) in enumerate(splits)]


def training_apart(kind: str, tr_dir: Path, tr: Sequence[int], ev: Sequence[int]) -> list[int]:
    """`tr` without the ids that are also evaluation subjects; DatasetError when none is left.

    In BB-MAS an id names a person, and the same person's other recordings (a file differing by
    one row) are not caught by content: trained on, they read as a far better EER. So an id on
    both sides is evaluated and not trained on (`check_disjoint` says which).
    """
    kept = [t for t in tr if t not in set(ev)]
    if not kept:
        raise DatasetError(f"every {kind} subject of --train-dir {tr_dir} ({_ids(list(tr))}) is also in --eval-dir: "
                           "no training subject is left once they are kept out of training")
    return kept


def check_disjoint(kind: str, tr_dir: Path, tr: Sequence[int], ev_dir: Path, ev: Sequence[int]) -> tuple[str, ...]:
    """Refuse evaluation files whose content is a training file's; a warning for ids in both with other files.

    A copied, linked, renamed or (de)compressed file would score the model on people it was
    trained on (a leak that reads as a perfect EER), so every file of `ev_dir` is compared with
    every file of `tr_dir` by decompressed content, whatever the ids (`datasets.shared_content`),
    not only the subjects `tr` and `ev` picked for this run. The same id with different files
    (ids among `tr` and `ev`) is taken as the same person: the callers leave it out of training
    (`training_apart`), and the warning the report carries says so.
    """
    same = shared_content(kind, tr_dir, ev_dir)
    if same:
        labels = [str(e) if t == e else f"{e} (training subject {t})" for t, e in same]
        raise DatasetError(f"--train-dir {tr_dir} and --eval-dir {ev_dir} hold the same {kind} file for subjects "
                           f"{_ids(labels)}: the model would be evaluated on people it was trained on; "
                           "remove them from one folder")
    shared = sorted(set(tr) & set(ev))
    if not shared:
        return ()
    msg = (f"subject ids {_ids(shared)} are in both --train-dir {tr_dir} and --eval-dir {ev_dir} with different "
           f"{kind} files: an id names a person, so they are left out of training and evaluated only")
    log.warning(msg)
    return (msg,)


def check_distinct(kind: str, folder: Path, label: str = "--data-dir") -> None:
    """Refuse a folder split by subject where two subjects' `kind` files hold the same data.

    A file copied, linked or (de)compressed under another id is one person under two ids: a
    k-fold split could train on one and evaluate the other (a leak that reads as a better EER),
    or score that person as their own impostor. Every file of the folder is compared
    (`datasets.duplicate_content`), not only the subjects a run picks. `label` names the option.
    """
    same = duplicate_content(kind, folder)
    if same:
        labels = [f"{b} (same as {a})" for a, b in same]
        raise DatasetError(f"{label} {folder} holds the same {kind} file for subjects {_ids(labels)}: a split by "
                           "subject could evaluate the model on people it was trained on; keep one of each")


def _ids(ids: Sequence[int | str], limit: int = 10) -> str:
    """`ids` for a message, cut to `limit` with the count of the rest."""
    head = ", ".join(str(i) for i in ids[:limit])
    return head + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def chronological_split(n: int, enrol_fraction: float = 0.5) -> tuple[slice, slice]:
    """(enrolment, test) slices of `n` time-ordered items: the earliest part enrols."""
    if not 0 < enrol_fraction < 1:
        raise ValueError("enrol_fraction must be in (0, 1)")
    cut = int(round(n * enrol_fraction))
    return slice(0, cut), slice(cut, n)


def sliding_windows(n: int, size: int, hop: int | None = None) -> list[slice]:
    """Start/stop slices of windows of `size` items every `hop` items (default half a window)."""
    hop = hop or max(size // 2, 1)
    return [slice(a, a + size) for a in range(0, n - size + 1, hop)]


def adaptive_trials(
    *,
    enroll: Callable[[np.ndarray], Any],
    window_scores: Callable[[Any, np.ndarray], np.ndarray],
    enrolment: Mapping[int, np.ndarray],
    tests: Mapping[int, np.ndarray],
    k: int,
    adapts: Callable[[float], bool] | None = None,
    max_adapt: int | None = None,
    evict: Callable[[list[bool]], Sequence[int]] | None = None,
) -> dict[tuple[int, int], np.ndarray]:
    """Scores of k-item test windows against templates that adapt to their owner's confirmed windows.

    Why: a person's behaviour drifts over a session (BB-MAS touch: the enrolment half is a
    typing task, the tested half free browsing), and a deployed template is re-enrolled with
    evidence of an approved transaction in which that modality matched (the app re-sends it to
    `POST /v1/users/{id}/enrolment` with `confirmed_transaction_id`). This is the prequential
    form of `chronological_split`'s protocol: each owner's test windows are taken in time
    order, and each is scored by the template as it stood *before* it. Every owner window is
    a confirmed transaction (approved, or its step-up passed); it adapts the template if
    `adapts(its score)` (default: always; the server's rule is that the modality matched) with
    its first `max_adapt` items (default: all), and the template is re-enrolled. The stored
    enrolment is the original items followed by the adapted ones, cut after each update to the
    items `evict(flags)` does not name (flags oldest first, True = adapted; default: nothing
    cut), the server's `server.services.enrolment.evicted` in the bench; the original
    enrolment is cut at the start by the same rule. Impostor windows never update a template
    (zero-effort impostors do not pass the confirming factor); impostor window j of m is
    scored by the state the template had at the same relative time, after ``j * n // m`` of
    its owner's n windows (adapting or not), so both sides meet templates of the same age.

    `tests[s]` holds subject s's time-ordered test items; `window_scores(template, X)` scores
    consecutive non-overlapping k-item windows of X (as many as it returns). Returns
    ``{(template subject, probe subject): window scores in time order}``, owners included.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if max_adapt is not None and max_adapt < 1:
        raise ValueError("max_adapt must be >= 1")

    def cut(E: np.ndarray, flags: list[bool]) -> tuple[np.ndarray, list[bool]]:
        drop = set(evict(flags)) if evict is not None else set()
        keep = [i for i in range(len(flags)) if i not in drop]
        return E[keep], [flags[i] for i in keep]

    states: dict[int, list[Any]] = {}
    out: dict[tuple[int, int], np.ndarray] = {}
    for s, T in tests.items():
        if s not in enrolment:
            continue
        E, flags = cut(np.asarray(enrolment[s]), [False] * len(enrolment[s]))
        tmpl = enroll(E)
        seq, genuine = [tmpl], []
        for j in range(len(T) // k):
            w = np.asarray(T[j * k:(j + 1) * k])
            score = float(np.asarray(window_scores(tmpl, w)).ravel()[0])
            genuine.append(score)
            if adapts is None or adapts(score):
                new = w[:max_adapt]
                E, flags = cut(np.vstack([E, new]), flags + [True] * len(new))
                tmpl = enroll(E)
            seq.append(tmpl)
        states[s], out[(s, s)] = seq, np.asarray(genuine)
    for s, seq in states.items():
        n = len(seq) - 1
        for p, T in tests.items():
            m = len(T) // k
            if p == s or m == 0:
                continue
            at = (np.arange(m) * n) // m  # the owner's windows seen before impostor window j
            scores = np.empty(m)
            for u in np.unique(at):
                sel = np.flatnonzero(at == u)
                scores[sel] = window_scores(seq[u], np.vstack([T[j * k:(j + 1) * k] for j in sel]))
            out[(s, p)] = scores
    return out


# --------------------------------------------------------------------------- score records

SCORE_COLUMNS = ("method", "window", "modality", "template_subject", "probe_subject", "probe_index", "label", "score")


@dataclass
class ScoreTable:
    """Columnar score records ``(method, window, modality, template, probe, index, label, score)``.

    label is 1 for a genuine trial (probe subject == template subject), 0 for an impostor.
    """

    rows: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in SCORE_COLUMNS})

    def add(
        self,
        *,
        method: str,
        window: str,
        modality: str,
        template_subject: int,
        probe_subject: Iterable[int] | int,
        scores: Iterable[float],
        probe_index: Iterable[int] | None = None,
    ) -> None:
        s = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=float).ravel()
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{method}/{window}: non-finite scores for template {template_subject}")
        n = s.size
        if isinstance(probe_subject, (int, np.integer)):
            ps = np.full(n, int(probe_subject))
        else:
            ps = np.asarray(list(probe_subject))
        idx = np.arange(n) if probe_index is None else np.asarray(list(probe_index))
        self.rows["method"] += [method] * n
        self.rows["window"] += [window] * n
        self.rows["modality"] += [modality] * n
        self.rows["template_subject"] += [int(template_subject)] * n
        self.rows["probe_subject"] += [int(p) for p in ps]
        self.rows["probe_index"] += [int(i) for i in idx]
        self.rows["label"] += [int(int(p) == int(template_subject)) for p in ps]
        self.rows["score"] += s.tolist()

    def extend(self, other: ScoreTable) -> None:
        for c in SCORE_COLUMNS:
            self.rows[c] += other.rows[c]

    def __len__(self) -> int:
        return len(self.rows["score"])

    def groups(self) -> list[tuple[str, str]]:
        """(method, window) pairs in first-seen order."""
        seen: dict[tuple[str, str], None] = {}
        for m, w in zip(self.rows["method"], self.rows["window"]):
            seen.setdefault((m, w), None)
        return list(seen)

    def select(self, method: str, window: str) -> dict[str, np.ndarray]:
        """Genuine/impostor scores and template subjects of one (method, window)."""
        m = np.asarray(self.rows["method"]) == method
        m &= np.asarray(self.rows["window"]) == window
        label = np.asarray(self.rows["label"])[m]
        score = np.asarray(self.rows["score"], float)[m]
        tmpl = np.asarray(self.rows["template_subject"])[m]
        return {
            "genuine": score[label == 1],
            "impostor": score[label == 0],
            "genuine_subject": tmpl[label == 1],
            "impostor_subject": tmpl[label == 0],
        }

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(SCORE_COLUMNS)
            w.writerows(zip(*(self.rows[c] for c in SCORE_COLUMNS)))

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> ScoreTable:
        t = cls()
        with open(path, newline="") as fh:
            r = csv.DictReader(fh)
            for row in r:
                for c in SCORE_COLUMNS:
                    v: Any = row[c]
                    if c in ("template_subject", "probe_subject", "probe_index", "label"):
                        v = int(v)
                    elif c == "score":
                        v = float(v)
                    t.rows[c].append(v)
        return t


def zero_effort_trials(
    table: ScoreTable,
    *,
    method: str,
    window: str,
    modality: str,
    templates: Mapping[int, Any],
    probes: Mapping[int, Any],
    score: Callable[[Any, Any], np.ndarray],
    max_impostor_probes: int | None = None,
    seed: int = 0,
) -> None:
    """Score each template against its owner's probes (genuine) and every other subject's (impostor).

    `probes[s]` is whatever `score(template, probes)` accepts for subject s (usually an
    (n, d) array of test windows); `max_impostor_probes` caps how many windows of each
    impostor subject are used (seeded), to bound the cost on large sets.
    """
    rng = np.random.default_rng(seed)
    subs = [s for s in templates if s in probes]
    for s in subs:
        tmpl = templates[s]
        for p in subs:
            pr = probes[p]
            idx = np.arange(len(pr))
            if p != s and max_impostor_probes is not None and len(pr) > max_impostor_probes:
                idx = np.sort(rng.choice(len(pr), size=max_impostor_probes, replace=False))
                pr = pr[idx] if hasattr(pr, "__getitem__") and isinstance(pr, np.ndarray) else [pr[i] for i in idx]
            if len(idx) == 0:
                continue
            table.add(method=method, window=window, modality=modality, template_subject=s,
                      probe_subject=p, scores=score(tmpl, pr), probe_index=idx)
