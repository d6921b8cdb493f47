"""`cadence bench sessions`: how continuous sessions treat their owners and impostors.

What a bank asks of continuous authentication: how often is the genuine user interrupted
(held for a step-up, or ended), and how soon is an impostor contained. Per subject-disjoint
fold over BB-MAS subjects with all three modalities: the fusion calibration is fitted on the
training subjects (as `cadence demo` fits it: each enrolled on the earliest half of their
windows, scored on everyone's later half); each evaluation subject is then enrolled the same
way, and sessions of `UPDATES` consecutive updates from the later half are run through the
server's own risk engine (`continuous.session.SessionRiskTracker` with the server's default
window and thresholds) and its status rules (`step_up` held until the bank's step-up):

* owner: the subject's own later windows, one session per modality;
* impostor: the later windows of `IMPOSTORS` other evaluation subjects on the owner's
  template (a person who picked up the owner's unlocked phone).

One update is one window (touch: a group of 5 swipes, the fewest the server scores). Rows per modality
and pooled: the share of sessions held (`step_up`) or ended at any point, the share ended, and
the mean update at which impostors were held and ended. No threshold is tuned here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.bench import BenchContext, BenchError, BenchOutput, register

MODALITIES = ("keystroke", "touch", "gait")
#: updates per session (10: ~1,000 keys of typing, 50 swipes or 100 s of walking)
UPDATES = 10
#: impostor sessions per owner and modality
IMPOSTORS = 3


def session_outcome(updates: list[Any], settings: Any) -> tuple[int | None, int | None]:
    """(update at which the session was first held in step-up, update at which it ended), 1-based; None: never.

    The server's rules: the tracker's status, with `step_up` held until the bank's step-up
    (none is run here) and `terminate` final.
    """
    from continuous.session import SessionRiskTracker

    t = SessionRiskTracker(settings.session_window, settings.session_step_up_risk, settings.session_terminate_risk)
    held = None
    for i, evidence in enumerate(updates, start=1):  # each: the calibrated evidence of one post
        status = t.update(evidence).status
        if status == "terminate":
            return held or i, i
        if status == "step_up" and held is None:
            held = i
    return held, None


def _rates(outcomes: list[tuple[int | None, int | None]]) -> dict[str, Any]:
    held = [h for h, _ in outcomes if h is not None]
    ended = [e for _, e in outcomes if e is not None]
    n = len(outcomes)
    return {"sessions": n, "held_or_ended": len(held) / n if n else float("nan"),
            "ended": len(ended) / n if n else float("nan"),
            "mean_update_held": float(np.mean(held)) if held else float("nan"),
            "mean_update_ended": float(np.mean(ended)) if ended else float("nan")}


@register("sessions", "continuous sessions: owners interrupted and impostors contained, through the server's risk engine")
def bench_sessions(ctx: BenchContext) -> BenchOutput:
    from cadence.settings import get_settings
    from evaluation.benches.fusion import _fusion_folds
    from fusion.policy import ModalityEvidence
    from modalities.reading import decision_windows, read_windows
    from server.demo import bbmas_people, fit_calibration
    from server.services.scoring import ScorerProvider

    # the server's: session_window, session_step_up_risk, session_terminate_risk (a bad CADENCE_* value is
    # a SettingsError naming the variable, as the server's start-up names it)
    settings = get_settings()
    provider = ScorerProvider(None)  # the packages' models, as a server with no trained registry serves
    folds = _fusion_folds(ctx)
    out: dict[tuple[str, str], list[tuple[int | None, int | None]]] = {}
    all_train: set[int] = set()
    all_eval: set[int] = set()
    for fi, (train_dir, eval_dir, train, evals) in enumerate(folds):
        all_train |= set(train)
        all_eval |= set(evals)
        # the loaders leave out people without usable data in a modality (their warnings say why)
        background, people = bbmas_people(train_dir, train), bbmas_people(eval_dir, evals)
        for role, folder, given, kept in (("training", train_dir, train, background),
                                          ("evaluation", eval_dir, evals, people)):
            if len(kept) < 2:  # calibration and impostor sessions pair one person with another
                raise BenchError(f"fold {fi + 1}: {len(kept)} of the {len(given)} {role} subjects in {folder} have "
                                 "usable data in all three modalities (the loaders' warnings say why); the sessions "
                                 "bench needs at least 2")
        engine = fit_calibration(background, None)
        rng = np.random.default_rng([ctx.seed, fi])
        for m in MODALITIES:
            active = provider.get(m)
            if not engine.applies(m, active.model_id):
                # uncalibrated evidence is left out of the risk ('uncalibrated'): its sessions would
                # read as "no impostor contained" when the modality was never scored at all
                ctx.note(f"fold {fi + 1}, {m}: not calibrated on the fold's training subjects (too few scores); "
                         "its sessions are left out")
                continue
            k = decision_windows(m)  # the server reads no fewer per update (touch: 5 swipes)
            # the windows the server enrols and scores: swipes, not taps
            read = {id(p): (read_windows(p.enrol[m]), read_windows(p.probes[m])) for p in people}
            usable = [p for p in people if len(read[id(p)][0]) >= 2 and len(read[id(p)][1]) >= k * UPDATES]
            if len(usable) < len(people):
                ctx.note(f"fold {fi + 1}, {m}: {len(people) - len(usable)} of {len(people)} evaluation subjects "
                         f"left out (fewer than 2 enrolment windows or {UPDATES} updates of later windows)")
            for owner in usable:
                tpl = active.scorer.enroll(np.vstack([w.values for w in read[id(owner)][0]]))
                others = [p for p in usable if p is not owner]
                picks = rng.choice(len(others), size=min(IMPOSTORS, len(others)), replace=False)
                for who, person in [("owner", owner)] + [("impostor", others[j]) for j in picks]:
                    s = active.scorer.compare(tpl, np.vstack([w.values for w in read[id(person)][1][: k * UPDATES]]))
                    updates = [[engine.calibrate(ModalityEvidence(m, float(score), n_windows=k,
                                                                   model_version=active.model_id))]
                               for score in np.asarray(s, dtype=float).reshape(UPDATES, k).mean(axis=1)]
                    out.setdefault((who, m), []).append(session_outcome(updates, settings))
    if not out:
        raise BenchError(f"no session could be run: no evaluation subject has 2 enrolment windows and {UPDATES} "
                         "updates of later windows in any modality")
    rows = []
    for who in ("owner", "impostor"):
        for m in (*MODALITIES, "all"):
            outcomes = [o for (w, mm), v in out.items() if w == who and (m == "all" or mm == m) for o in v]
            if outcomes:
                rows.append({"method": who, "window": m, **{k: round(v, 4) if isinstance(v, float) else v
                                                            for k, v in _rates(outcomes).items()}})
    protocol = {
        "population": "BB-MAS subjects with all three modalities, subject-disjoint folds",
        "folds": len(folds),
        "calibration": "fitted on the fold's training subjects only (cadence demo's fit_calibration)",
        "models": "the packages' default scorers (a server with no trained registry)",
        "enrolment": "each evaluation subject's earliest half of windows (at most 40 per modality; touch taps left out, as the server does)",
        "session": f"{UPDATES} consecutive updates of one modality from the later half (touch: {decision_windows('touch')} "
                   f"swipes per update); owner: own windows; impostor: {IMPOSTORS} other evaluation subjects "
                   "on the owner's template",
        "engine": f"continuous.session.SessionRiskTracker, window {settings.session_window}, step-up risk "
                  f"{settings.session_step_up_risk}, terminate risk {settings.session_terminate_risk} (server defaults); "
                  "step_up held (no bank step-up is run)",
    }
    return BenchOutput(protocol=protocol, train_subjects=sorted(all_train), eval_subjects=sorted(all_eval),
                       rows=rows)
