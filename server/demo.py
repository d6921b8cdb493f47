"""The `cadence demo` scenario: a genuine user and an impostor through the whole path.

Device side (this process, like the app): events -> feature windows (raw events never leave),
signed requests. Server side (uvicorn on loopback): enrolment, scoring, fusion, decision.
With a data folder it replays real BB-MAS subjects (enrol on the earliest half of a
subject's recordings, probe with the later half; the impostor is another subject's later
data on the genuine user's device); without one it uses SYNTHETIC people.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cadence.settings import Settings, get_settings
from modalities.events import MODALITIES, FeatureWindow
from modalities.reading import decision_windows, read_windows
from server.client.api import DeviceClient
from server.client.features import evidence_unit, features_for

log = logging.getLogger(__name__)

AMOUNTS = ("25.00", "80.00", "450.00", "2500.00")
MAX_ENROL = 40
#: people (other than the owner and the impostor) whose scores calibrate the fusion
N_BACKGROUND = 6


@dataclass
class Person:
    """Feature windows of one person, split chronologically into enrolment and probes."""

    label: str
    enrol: dict[str, list[FeatureWindow]]
    probes: dict[str, list[FeatureWindow]]


@dataclass
class DemoRow:
    user: str
    probe: str
    genuine: bool
    amount: str
    decision: str
    risk: float
    reasons: str
    #: windows this approved transaction re-enrolled (controlled adaptation); 0 when not approved
    adapted: int = 0


def _split(windows: list[FeatureWindow]) -> tuple[list[FeatureWindow], list[FeatureWindow]]:
    cut = len(windows) // 2
    enrol, probes = windows[:cut], windows[cut:]
    if len(enrol) > MAX_ENROL:  # keep the request small: evenly spaced over the enrolment half
        enrol = [enrol[i] for i in np.linspace(0, len(enrol) - 1, MAX_ENROL).astype(int)]
    return enrol, probes


def synthetic_people(seed: int = 0, n: int = 2, first: int = 1) -> list[Person]:
    """`n` SYNTHETIC people (evaluation/synthetic.py)."""
    from evaluation.synthetic import SyntheticPerson

    people = []
    for k in range(first, first + n):
        label = f"synthetic person {k}"
        p = SyntheticPerson(1000 * seed + k)
        rng = np.random.default_rng([seed, k])
        wins = {"keystroke": features_for("keystroke", p.keystrokes(3000, rng)),
                "touch": features_for("touch", p.touch(80, rng)),
                "gait": features_for("gait", p.walk(240.0, rng=rng))}
        enrol, probes = {}, {}
        for m, w in wins.items():
            enrol[m], probes[m] = _split(w)
        people.append(Person(label, enrol, probes))
    return people


def bbmas_subjects(data_dir: Path) -> list[int]:
    """Subjects present in all three BB-MAS folders, sorted."""
    from evaluation.datasets import available_subjects

    return sorted(set(available_subjects(data_dir, "keystroke")) & set(available_subjects(data_dir, "touch"))
                  & set(available_subjects(data_dir, "gait")))


def bbmas_people(data_dir: Path, subjects: list[int]) -> list[Person]:
    """Real BB-MAS subjects as `Person`s (chronological enrolment / probe halves).

    A subject a loader left out (its file had nothing usable, e.g. no 5 s of walking: the
    loader says so) is left out here too, in the order given.
    """
    from evaluation.datasets import load_bbmas_gait, load_bbmas_keystrokes, load_bbmas_touch
    keys = load_bbmas_keystrokes(data_dir, subjects)
    touch = load_bbmas_touch(data_dir, subjects)
    gait = load_bbmas_gait(data_dir, subjects)
    people = []
    for sid in subjects:
        if sid not in keys or sid not in touch or sid not in gait:
            log.warning("BB-MAS subject %s left out: no usable %s data in %s", sid,
                        " or ".join(m for m, d in (("keystroke", keys), ("touch", touch), ("gait", gait)) if sid not in d),
                        data_dir)
            continue
        wins = {"keystroke": features_for("keystroke", keys[sid]),
                "touch": features_for("touch", touch[sid]),
                "gait": [w for seg in gait[sid].segments for w in features_for("gait", seg)]}
        enrol, probes = {}, {}
        for m, w in wins.items():
            enrol[m], probes[m] = _split(w)
        people.append(Person(f"BB-MAS subject {sid}", enrol, probes))
    return people


def fit_calibration(background: list[Person], registry_root: Path | None) -> Any:
    """Fit per-modality score calibration on background people (never the demo's two).

    Each background person is enrolled with the scorer the server will use; their own probes
    are genuine trials and the other background people's probes impostor trials.
    """
    from fusion.engine import FusionEngine
    from server.services.scoring import ScorerProvider

    provider = ScorerProvider(registry_root)
    engine = FusionEngine()
    for m in MODALITIES:
        active = provider.get(m)
        scorer = active.scorer
        gen: list[float] = []
        imp: list[float] = []
        k = decision_windows(m)  # calibrate the unit a decision reads (touch: the mean of 5 swipes)
        # what the server enrols and scores: swipes, not taps
        read = {id(p): (read_windows(p.enrol[m]), read_windows(p.probes[m])) for p in background}
        for a in background:
            enrol = read[id(a)][0]
            if len(enrol) < 2:
                continue
            tpl = scorer.enroll(np.vstack([w.values for w in enrol]))
            for b in background:
                probes = read[id(b)][1]
                if len(probes) < k:
                    continue
                s = scorer.compare(tpl, np.vstack([w.values for w in probes]))
                s = s[: s.size // k * k].reshape(-1, k).mean(axis=1)
                (gen if a is b else imp).extend(s.tolist())
        if len(gen) >= 5 and len(imp) >= 5:
            engine.fit_modality(m, genuine=np.asarray(gen), impostor=np.asarray(imp))
            engine.report[m]["model_version"] = active.model_id  # applies to this model only
        else:  # its evidence will be left out of decisions ('uncalibrated'): say so, it is not silent
            log.warning("%s: not calibrated: %d genuine and %d impostor scores from %d background people "
                        "(at least 5 of each needed)", m, len(gen), len(imp), len(background))
    return engine


def _reasons(resp: dict[str, Any]) -> str:
    """One line per reason: ``gait match +2.1`` (LLR contribution when there is one)."""
    return "\n".join(f"{r['modality']} {r['code']} {r['contribution']:+.1f}" if r["contribution"] else
                     f"{r['modality']} {r['code']}" for r in resp["reasons"])


def adaptable(resp: dict[str, Any], evidence: list[FeatureWindow]) -> list[FeatureWindow]:
    """The windows of an approved call that may adapt a template, as the app re-sends them.

    Only a modality whose own evidence matched in the decision adapts (a mismatch approved on
    the other modalities is refused, 409 `not_matched_evidence`), with at most
    `ADAPT_MAX_WINDOWS` windows of it per transaction.
    """
    from server.services.enrolment import ADAPT_MAX_WINDOWS, MATCHED

    matched = {r["modality"] for r in resp["reasons"] if r["code"] in MATCHED}
    out: list[FeatureWindow] = []
    for m in MODALITIES:
        out += [w for w in evidence if w.modality == m and m in matched][:ADAPT_MAX_WINDOWS]
    return out


def _bank_view(dev: DeviceClient, resp: dict[str, Any]) -> dict[str, Any]:
    """The decision as the bank reads it (exact risk and LLR contributions; the device is told less).

    The demo plays the bank too; without the bank's key (a server configured with other keys)
    it shows the device's answer.
    """
    r = dev.http.get(f"/v1/transactions/{resp['transaction_id']}", headers={"X-API-Key": dev.bank_api_key})
    return dict(r.json()) if r.status_code == 200 else resp


def run_scenario(base_url: str, genuine: Person, impostor: Person, *, user_id: str = "alice",
                 amounts: tuple[str, ...] = AMOUNTS) -> list[DemoRow]:
    """Register, consent, enrol the genuine user, then transact as the owner and as the impostor.

    Each approved transaction's evidence is re-enrolled, as the app does: the template adapts.
    """
    rows: list[DemoRow] = []
    with DeviceClient(base_url, user_id=user_id) as dev:
        dev.register()
        for m in MODALITIES:
            dev.grant_consent(m)
        for m in MODALITIES:
            dev.enrol(genuine.enrol[m])
        for who, person in (("genuine", genuine), ("impostor", impostor)):
            for i, amount in enumerate(amounts):
                evidence = [w for m in MODALITIES for w in evidence_unit(m, person.probes[m], i)]
                resp = dev.authorize(amount=amount, payee="ACME-SHOP-42", evidence=evidence)
                adapted = 0
                if resp["decision"] == "approve":  # the app re-enrols approved evidence (controlled adaptation)
                    confirmed = adaptable(resp, evidence)
                    if confirmed:
                        dev.enrol(confirmed, confirmed_transaction_id=resp["transaction_id"])
                    adapted = len(confirmed)
                shown = _bank_view(dev, resp)
                rows.append(DemoRow(user_id, f"{person.label} ({who})", who == "genuine", amount, resp["decision"],
                                    float(shown["risk"]), _reasons(shown), adapted))
    return rows


class DemoSettings(Settings):
    """Settings of the demo's private server: only what is passed in, never CADENCE_* or `.env`.

    The demo plays both the bank and the device against a throwaway loopback server, so the
    operator's policy and security settings (environment, API keys, currencies, lockout, rate
    limits, database) are not its business: a production environment or a strict rate limit
    would only turn the demo into refused calls. Every field not passed keeps its development default.
    """

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[Any], init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> tuple[Any, ...]:
        return (init_settings,)


def run_demo(data_dir: Path | None, *, seed: int = 0, workdir: Path | None = None) -> tuple[str, list[DemoRow]]:
    """Start a server on a free loopback port, run the scenario, stop it; (data label, rows).

    Of the CADENCE_* settings the demo reads only CADENCE_MODEL_REGISTRY (the models its server
    scores with) and CADENCE_FUSION_CALIBRATION (their calibration, by default beside the registry,
    as the server reads it: used when it applies to all of them); its server runs on
    `DemoSettings`, with a database in a temporary folder (audited under their development key:
    the app binds its own settings' key, whatever CADENCE_AUDIT_HMAC_KEY says).
    """
    from server.runner import running_server

    base = get_settings()
    registry_root = base.model_registry if base.model_registry and base.model_registry.exists() else None
    if data_dir is not None:
        subjects = bbmas_subjects(data_dir)
        if len(subjects) < 2 + N_BACKGROUND:
            from evaluation.datasets import DatasetError

            raise DatasetError(f"data_dir: need {2 + N_BACKGROUND} subjects with all three BB-MAS modalities in "
                               f"{data_dir}, found {len(subjects)} (unset CADENCE_DATA_DIR for the synthetic demo)")
        # a few spares: a subject whose files hold nothing usable is left out by the loaders
        people = bbmas_people(data_dir, subjects[:2 * (2 + N_BACKGROUND)])[:2 + N_BACKGROUND]
        if len(people) < 2 + N_BACKGROUND:
            from evaluation.datasets import DatasetError

            raise DatasetError(f"data_dir: need {2 + N_BACKGROUND} subjects with usable data in all three BB-MAS "
                               f"modalities in {data_dir}, found {len(people)} (the warnings above say why)")
        genuine, impostor, *background = people
        label = f"REAL BB-MAS data from {data_dir}: {genuine.label} is the owner, {impostor.label} the impostor"
    else:
        genuine, impostor, *background = synthetic_people(seed, 2 + N_BACKGROUND)
        label = "SYNTHETIC behaviour (evaluation/synthetic.py): not real people, says nothing about accuracy"
    from server.training import fusion_path

    served, trained_calibration = served_models(registry_root, fusion_path(base, registry_root))
    with tempfile.TemporaryDirectory(prefix="cadence-demo-") as tmp:
        root = Path(workdir or tmp)
        update: dict[str, Any] = {"database_url": f"sqlite:///{root / 'demo.sqlite'}", "host": "127.0.0.1",
                                  "model_registry": base.model_registry}
        if trained_calibration is None:  # the packages' defaults: calibrate them on the background people
            fit_calibration(background, registry_root).save(root / "fusion-calibration.json")
            update["fusion_calibration"] = root / "fusion-calibration.json"
            label += f"; models: {served}, calibrated here on {len(background)} background people"
        else:
            update["fusion_calibration"] = trained_calibration
            label += f"; models: {served}, with their own calibration ({trained_calibration})"
        with running_server(DemoSettings(**update)) as url:
            rows = run_scenario(url, genuine, impostor)
    return label, rows


def served_models(registry_root: Path | None, calibration: Path | None = None) -> tuple[str, Path | None]:
    """What the demo's server will score with (in words), and the calibration file to use.

    The file is `calibration` (by default the registry's: `server.training.fusion_path`) when it
    holds a calibrator for every modality's active model (`cadence models train` wrote it); else
    None, and the demo calibrates on its background people: a modality the file leaves out would
    be left out of every decision (`uncalibrated`).
    """
    from server.fusion_source import FusionSource
    from server.services.scoring import ScorerProvider

    provider = ScorerProvider(registry_root)
    active = {m: provider.get(m) for m in MODALITIES}
    words = ", ".join(f"{m} {a.model_id}" for m, a in active.items())
    path = calibration or (registry_root / "fusion-calibration.json" if registry_root is not None else None)
    engine = FusionSource(path).current() if path is not None and path.is_file() else None
    if engine is not None and all(engine.applies(m, a.model_id) for m, a in active.items()):
        return words, path
    return words, None
