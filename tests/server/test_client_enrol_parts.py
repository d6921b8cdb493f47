"""The device client enrols in parts the server accepts: each modality's first part meets the enrolment gate.

BB-MAS subject 27's first 16 touch windows hold 2 swipes and 14 taps (taps are not enrolled);
the client sent them as its first request, which the server refused (422 `too_few_windows`,
have 2 of 3), and the rest was never sent.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cadence.settings import Settings
from modalities.events import FeatureWindow
from modalities.touch import IDX
from server import schemas
from server.client import api
from server.client.api import ApiCallError, enrollable, enrolment_parts
from tests.server.conftest import new_device


def _tap(w: FeatureWindow) -> FeatureWindow:
    values = np.array(w.values, dtype=float)
    values[IDX["is_tap"]] = 1.0
    return replace(w, values=values)


def _taps_first(touch: list[FeatureWindow]) -> list[FeatureWindow]:
    """14 taps, 2 swipes, 6 taps, 6 swipes: the first 16 windows hold 2 the server enrols."""
    taps = [_tap(w) for w in touch[40:60]]
    return [*taps[:14], *touch[:2], *taps[14:], *touch[2:8]]


def test_taps_first_are_enrolled_in_parts(client: TestClient, windows: dict) -> None:
    dev = new_device(client)
    dev.grant_consent("touch")
    sent = _taps_first(windows["owner"]["touch"])
    assert sum(map(enrollable, sent[:16])) == 2
    try:
        answers = dev.enrol(sent)
    except ApiCallError as exc:  # the old client: its first request of 16 windows was refused
        pytest.fail(f"enrolment refused: {exc}")
    assert answers[-1]["modalities"][0]["n_windows"] == 8  # every swipe is enrolled
    again = dev.signed("POST", f"/v1/users/{dev.user_id}/enrolment", {"windows": [sent[-1].to_dict()]})
    assert again.status_code == 409 and again.json()["code"] == "evidence_replay"  # every window was sent


@pytest.mark.parametrize("chunk", [1, 2, 4, 16, 64, 500])
def test_parts_keep_the_enrolled_windows_in_order(windows: dict, chunk: int) -> None:
    sent = _taps_first(windows["owner"]["touch"])
    parts = enrolment_parts(sent, chunk)
    flat = [w for part in parts for w in part]
    assert sorted(map(id, flat)) == sorted(map(id, sent))  # each window once
    assert [w for w in flat if enrollable(w)] == [w for w in sent if enrollable(w)]
    assert sum(map(enrollable, parts[0])) >= api.ENROL_MIN_WINDOWS
    assert all(len(p) <= max(min(chunk, api.MAX_WINDOWS), api.ENROL_MIN_WINDOWS) for p in parts)


def test_a_first_part_that_holds_enough_is_sent_as_it_was(windows: dict) -> None:
    sent = windows["owner"]["touch"][:40]
    assert enrolment_parts(sent, 16) == [sent[:16], sent[16:32], sent[32:]]


def test_low_quality_windows_do_not_count_toward_the_gate(windows: dict) -> None:
    sent = [replace(w, quality=0.01) for w in windows["owner"]["gait"][:4]] + windows["owner"]["gait"][4:10]
    first = enrolment_parts(sent, 4)[0]
    assert sum(w.quality >= api.ENROL_MIN_QUALITY for w in first) == api.ENROL_MIN_WINDOWS
    assert len(first) == 4


def test_modalities_go_in_parts_of_their_own(client: TestClient, windows: dict) -> None:
    dev = new_device(client)
    for m in ("touch", "gait"):
        dev.grant_consent(m)
    touch, gait = _taps_first(windows["owner"]["touch"]), windows["owner"]["gait"][:10]
    mixed = [*touch[:14], *gait[:5], *touch[14:], *gait[5:]]  # old: 16 windows, 14 taps and 2 gait: refused
    answers = dev.enrol(mixed)
    assert all(len(a["modalities"]) == 1 for a in answers)
    assert {a["modalities"][0]["modality"] for a in answers} == {"touch", "gait"}


def test_the_client_knows_the_server_gate() -> None:
    fields = Settings.model_fields
    assert api.ENROL_MIN_WINDOWS == fields["enrol_min_windows"].default
    assert api.ENROL_MIN_QUALITY == fields["enrol_min_quality"].default
    assert api.MAX_WINDOWS == schemas.MAX_WINDOWS


def test_a_decisions_touch_evidence_is_five_swipes_taps_skipped(windows: dict) -> None:
    """What the demo and the load generator send: the unit the server reads, never fewer swipes."""
    from server.client.features import evidence_unit

    swipes = windows["owner"]["touch"][:12]
    mixed = [_tap(w) if i % 3 == 0 else w for i, w in enumerate(swipes)]  # taps at 0, 3, 6, 9
    read = [w for i, w in enumerate(swipes) if i % 3]
    assert [id(w) for w in evidence_unit("touch", mixed, 0)] == [id(w) for w in read[:5]]
    assert [id(w) for w in evidence_unit("touch", mixed, 1)] == [id(w) for w in read[5:8] + read[:2]]
    assert evidence_unit("touch", mixed[:6], 0) == []  # 4 swipes: none
    assert len(evidence_unit("keystroke", windows["owner"]["keystroke"], 3)) == 1
