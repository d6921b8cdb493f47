"""Keystroke LLRs of windows shorter than 100 keys, on the model and calibration a server serves.

`python scripts/keystroke_window_lengths.py REGISTRY EVAL_DIR [LENGTH ...]` (default lengths 20 30
50 70 100). REGISTRY is a model registry as `cadence models train|calibrate` leave it: its active
keystroke model and its `fusion-calibration.json`, read as the server reads them. EVAL_DIR holds
people neither was fitted on (layout of shared/datasets).

Each person of EVAL_DIR enrols on 100-key windows (hop 50) of the earliest half of their typing
(`evaluation.pair_scores.keystroke_length_split`, the cut `models calibrate` fits on); the later
half is cut into disjoint windows of n keys, each featurised alone with `window_features`: what the phone sends for a recording of n <= 100
keys (`mobile_client.features.keystroke_windows`). Every score goes through
`FusionEngine.calibrate`, the server's path. Printed per length, for every window and for those
the policy reads (quality >= its min_quality): the impostor and genuine rates of LLR >= each
tier's approve_llr, the genuine rate of LLR <= deny_llr, Cllr; then the impostor rate at LLR 1,
2.3, ln 100 and ln 1000 as a ratio to the 100-key rate, with a 95 % bootstrap range over people
(templates and probes redrawn together; 1000 draws, seed 0).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python scripts/keystroke_window_lengths.py REGISTRY EVAL_DIR [LENGTH ...]")
    import federated.scorer  # noqa: F401  (a published federated model's class, for `Scorer.load`)
    from evaluation.datasets import available_subjects
    from evaluation.pair_scores import keystroke_length_split
    from fusion.calibration import cllr
    from fusion.engine import FusionEngine
    from fusion.policy import ModalityEvidence, default_policy
    from modalities.keystroke import DEFAULT_WINDOW_KEYS
    from modalities.registry import ModelRegistry
    from server.training import CALIBRATION_FILE

    registry, eval_dir = Path(argv[0]), Path(argv[1])
    lengths = sorted({int(x) for x in argv[2:]} | {DEFAULT_WINDOW_KEYS}) if argv[2:] else [20, 30, 50, 70, 100]
    reg = ModelRegistry(registry)
    active = reg.active("keystroke")
    if active is None:
        raise SystemExit(f"no active keystroke model in {registry}")
    scorer = reg.load("keystroke")
    engine = FusionEngine.load(registry / CALIBRATION_FILE)
    model = f"registry:{active.version}"
    pol = default_policy()
    deny = pol.tiers[0].deny_llr
    t0 = time.process_time()
    templates, probes = {}, {n: {} for n in lengths}
    # the calibration's own cut (`models calibrate`): 100-key enrolment windows, n-key probes featurised alone
    for s, (enrol, X, qual, keys) in keystroke_length_split(eval_dir, available_subjects(eval_dir, "keystroke"),
                                                            lengths).items():
        templates[s] = scorer.enroll(enrol)
        for n in lengths:
            probes[n][s] = (X[keys == n], qual[keys == n])
    people = np.array(sorted(templates))
    print(f"{people.size} people of {eval_dir}; {scorer.name} {model}; "
          f"calibrator {engine.calibrators['keystroke'].to_dict()}")
    print(f"tiers {[(t.name, round(t.approve_llr, 2)) for t in pol.tiers]}; deny_llr {deny}; "
          f"min_quality {pol.min_quality}\n")
    print("| keys | windows | median quality | impostor trials | impostor LLR >= "
          + " / ".join(f"{t.approve_llr:.2f}" for t in pol.tiers) + " | genuine trials | genuine LLR >= "
          + " / ".join(f"{t.approve_llr:.2f}" for t in pol.tiers) + f" | genuine LLR <= {deny} | Cllr |")
    print("|---|---|---|---|---|---|---|---|---|")
    pairs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # n -> impostor (template, probe, LLR)
    for n in lengths:
        gen, imp, gq, iq, it, ip = [], [], [], [], [], []
        for s, tmpl in templates.items():
            for p in people:
                X, qual = probes[n][p]
                llr = np.array([engine.calibrate(ModalityEvidence("keystroke", float(v), float(w), 1, scorer.name,
                                                                  model)).llr
                                for v, w in zip(scorer.compare(tmpl, X), qual, strict=True)], float)
                (gen if s == p else imp).append(llr)
                (gq if s == p else iq).append(qual)
                if s != p:
                    it.append(np.full(llr.size, s))
                    ip.append(np.full(llr.size, p))
        g, i, g_q, i_q = (np.concatenate(v) for v in (gen, imp, gq, iq))
        pairs[n] = (np.concatenate(it), np.concatenate(ip), i)
        for read in (False, True):
            gm = g_q >= pol.min_quality if read else np.ones(g.size, bool)
            im = i_q >= pol.min_quality if read else np.ones(i.size, bool)
            label = f"{n} (quality >= {pol.min_quality:g})" if read else str(n)
            if not gm.any() or not im.any():
                print(f"| {label} | {int(sum((probes[n][p][1] >= pol.min_quality).sum() for p in people))} | | | | | | | |")
                continue
            windows = sum(int(m.sum()) for m in ((probes[n][p][1] >= pol.min_quality) if read
                                                 else np.ones(probes[n][p][1].size, bool) for p in people))
            imp_cells = " / ".join(f"{np.mean(i[im] >= t.approve_llr):.4f} ({int(np.sum(i[im] >= t.approve_llr))})"
                                   for t in pol.tiers)
            gen_cells = " / ".join(f"{np.mean(g[gm] >= t.approve_llr):.3f}" for t in pol.tiers)
            print(f"| {label} | {windows} | {np.median(np.r_[g_q[gm], i_q[im]]):.3f} | {int(im.sum())} | {imp_cells} | "
                  f"{int(gm.sum())} | {gen_cells} | {np.mean(g[gm] <= deny):.4f} | "
                  f"{cllr(genuine_llr=g[gm], impostor_llr=i[im]):.3f} |")
    xs = (1.0, 2.3, float(np.log(100)), float(np.log(1000)))
    print("\nImpostor rate at each LLR, every window (hits, in how many template/probe pairs); ratio to the 100-key "
          "rate [95 % bootstrap range over people: loose where few pairs carry the hits]\n")
    print("| keys | " + " | ".join(f"LLR >= {x:.2f}" for x in xs) + " |")
    print("|---|" + "---|" * len(xs))
    rng = np.random.default_rng(0)
    weights = [np.bincount(np.searchsorted(people, rng.choice(people, people.size)), minlength=people.size)
               for _ in range(1000)]

    def table(n: int, x: float) -> tuple[np.ndarray, np.ndarray]:
        """Hits and trials per (template, probe) pair, as matrices over people."""
        it, ip, llr = pairs[n]
        a, b = np.searchsorted(people, it), np.searchsorted(people, ip)
        hits, trials = np.zeros((people.size,) * 2), np.zeros((people.size,) * 2)
        np.add.at(hits, (a, b), llr >= x)
        np.add.at(trials, (a, b), 1.0)
        return hits, trials

    for n in lengths:
        cells = []
        for x in xs:
            (h, t), (h0, t0_) = table(n, x), table(DEFAULT_WINDOW_KEYS, x)
            ratios = []
            for w in weights:
                W = np.outer(w, w)
                np.fill_diagonal(W, 0)
                base = (W * h0).sum() / (W * t0_).sum()
                if base > 0:
                    ratios.append((W * h).sum() / (W * t).sum() / base)
            rate, base = h.sum() / t.sum(), h0.sum() / t0_.sum()
            ratio = f"x{rate / base:.2f}" if base > 0 else "x-"
            spread = f" [{np.quantile(ratios, 0.025):.2f}, {np.quantile(ratios, 0.975):.2f}]" if len(ratios) > 100 else ""
            cells.append(f"{rate:.4f} ({int(h.sum())} in {int((h > 0).sum())} pairs) {ratio}{spread}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"\n{time.process_time() - t0:.0f} s CPU")


if __name__ == "__main__":
    main(sys.argv[1:])
