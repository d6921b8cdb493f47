"""Continuous sessions over HTTP: evidence-free windows, extreme scores, unreadable stored states."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from fastapi.testclient import TestClient

import server.services.sessions as svc
from continuous.session import SessionRiskTracker
from fusion.policy import ModalityEvidence
from server.models import AuthSession


def _new_session(dev) -> str:  # type: ignore[no-untyped-def]
    r = dev.signed("POST", "/v1/sessions", {"user_id": dev.user_id})
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


def _store(client: TestClient, sid: str, state: dict[str, Any], status: str, risk: float) -> None:
    with client.app.state.cadence.sessions() as db, db.begin():  # type: ignore[attr-defined]
        row = db.get(AuthSession, sid)
        row.state, row.status, row.risk = state, status, risk


def _post(dev, sid: str, windows: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    return dev.signed("POST", f"/v1/sessions/{sid}/evidence", {"windows": windows})


def _bank_view(client: TestClient, sid: str) -> dict[str, Any]:
    """The bank's view of a session (the device's answers carry no risk)."""
    r = client.get(f"/v1/sessions/{sid}", headers={"X-API-Key": "dev-bank-key"})
    assert r.status_code == 200, r.text
    return dict(r.json())


#: the settings' default thresholds, which `fallback_update` is given
THRESHOLDS = {"window": 5, "step_up_risk": 0.6, "terminate_risk": 0.9}


def test_evidence_free_windows_do_not_clear_a_step_up(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    sid = _new_session(enrolled)
    t = SessionRiskTracker()
    st = t.update([ModalityEvidence("keystroke", 0.0, llr=-1.5)])
    assert st.status == "step_up"
    _store(client, sid, t.to_dict(), st.status, st.risk)
    for i in range(6):  # windows of no usable quality: 6 x LLR 0 would have pulled risk to 0.5
        w = windows["other"]["keystroke"][13 + i].to_dict()
        w["quality"] = 0.0
        r = _post(enrolled, sid, [w])
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "step_up" and _bank_view(client, sid)["risk"] == pytest.approx(st.risk)


def test_an_infinite_score_is_a_bounded_mismatch_not_a_500(client: TestClient, enrolled, windows,  # type: ignore[no-untyped-def]
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real = svc.assess_evidence

    def overflowing(*a: Any, **k: Any):  # type: ignore[no-untyped-def]
        out = real(*a, **k)  # a scorer overflowing on extreme (but finite) feature values
        out.evidence = [dataclasses.replace(e, score=float("-inf")) for e in out.evidence]
        return out

    monkeypatch.setattr(svc, "assess_evidence", overflowing)
    sid = _new_session(enrolled)
    r = _post(enrolled, sid, [w.to_dict() for w in windows["owner"]["touch"][6:11]])  # a touch update: 5 swipes
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("step_up", "terminate") and _bank_view(client, sid)["risk"] > 0.6


def _impostor_llr(monkeypatch: pytest.MonkeyPatch) -> None:
    real = svc.assess_evidence

    def forced(*a: Any, **k: Any):  # type: ignore[no-untyped-def]
        out = real(*a, **k)
        out.evidence = [dataclasses.replace(e, llr=-6.0) for e in out.evidence]
        return out

    monkeypatch.setattr(svc, "assess_evidence", forced)


def test_a_touch_update_of_five_swipes_counts_once_toward_the_full_window(  # type: ignore[no-untyped-def]
        client: TestClient, enrolled, windows, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh session ends on a full window of updates, not on its first post of 5 swipes (5 windows)."""
    _impostor_llr(monkeypatch)
    sid = _new_session(enrolled)
    touch = windows["owner"]["touch"]
    seen = [_post(enrolled, sid, [w.to_dict() for w in touch[10 + 5 * k:15 + 5 * k]]).json() for k in range(5)]
    assert [r["status"] for r in seen] == ["step_up"] * 4 + ["terminate"], seen
    assert seen[0]["scored_windows"] == 5 and seen[-1]["scored_windows"] == 25


def test_a_stored_state_without_an_update_count_reads_its_window_count(  # type: ignore[no-untyped-def]
        client: TestClient, enrolled, windows, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions stored before `scored_updates` counted windows: that count stands in for it."""
    _impostor_llr(monkeypatch)
    sid = _new_session(enrolled)
    assert _post(enrolled, sid, [windows["owner"]["gait"][10].to_dict()]).json()["status"] == "step_up"
    with client.app.state.cadence.sessions() as db:  # type: ignore[attr-defined]
        state = dict(db.get(AuthSession, sid).state)
    assert state.pop("scored_updates") == 1
    _store(client, sid, {**state, "scored_windows": 4}, "step_up", 0.99)
    assert _post(enrolled, sid, [windows["owner"]["gait"][11].to_dict()]).json()["status"] == "terminate"


@pytest.mark.parametrize("damage", [{"version": 2}, {"llrs": [float("nan")]}, {"state": None},
                                    {"llrs": "x", "version": None}, "garbage", ["a", "list"], "a string",
                                    {"scored_windows": "many"}, {"scored_updates": -2}, {"windows_received": -1}, {"last_windows": "x"},
                                    None, 0, False])
def test_an_unreadable_stored_state_is_a_409(client: TestClient, enrolled, windows, damage) -> None:  # type: ignore[no-untyped-def]
    sid = _new_session(enrolled)
    state: Any
    if damage == "garbage":  # neither engine's: it was read as a fresh fallback window (risk reset)
        state = {"garbage": 1}
    elif not isinstance(damage, dict):  # not a mapping at all: was a 500
        state = damage
    else:
        state = {**SessionRiskTracker().to_dict(), **damage}
        if damage.get("version", 1) is None:  # a state without a version goes to the fallback window
            state.pop("version")
    _store(client, sid, state, "ok", 0.5)
    r = _post(enrolled, sid, [windows["owner"]["gait"][6].to_dict()])
    assert r.status_code == 409 and r.json()["code"] == "session_state_unreadable", r.text
    # reading it answers what it can: the risk and status columns, unless the counts cannot be read
    books = not isinstance(state, dict) or bool({"scored_windows", "scored_updates", "windows_received", "last_windows"} & set(damage))
    assert enrolled.signed("GET", f"/v1/sessions/{sid}").status_code == (409 if books else 200)
    # the refused window was not consumed: a new session takes it
    r = _post(enrolled, _new_session(enrolled), [windows["owner"]["gait"][6].to_dict()])
    assert r.status_code == 200, r.text


def test_fallback_window_keeps_status_without_evidence() -> None:
    state = svc.fallback_update({"llrs": []}, [ModalityEvidence("gait", 0.0, llr=-1.5)], **THRESHOLDS)
    assert state["state"]["status"] == "step_up"
    for empty in ([], [ModalityEvidence("gait", -50.0, quality=0.0)], [ModalityEvidence("gait", float("nan"))]):
        assert svc.fallback_update(state, empty, **THRESHOLDS) == state
    with pytest.raises(ValueError, match="llrs"):
        svc.fallback_update({"llrs": [float("inf")]}, [], **THRESHOLDS)


def test_fallback_window_ends_a_session_only_on_a_full_window() -> None:
    state: dict[str, Any] = {"llrs": []}
    statuses = []
    for _ in range(THRESHOLDS["window"]):
        state = svc.fallback_update(state, [ModalityEvidence("gait", 0.0, llr=-12.0)], **THRESHOLDS)
        statuses.append(state["state"]["status"])
    assert statuses == ["step_up"] * 4 + ["terminate"]


def test_a_state_ended_on_fewer_windows_by_older_code_is_read_as_ended() -> None:
    """Termination is final: a stored terminate the risk reached on one window stays readable."""
    t = SessionRiskTracker()
    t.update([ModalityEvidence("keystroke", 0.0, llr=-12.0)])
    d = t.to_dict()
    assert d["state"]["status"] == "step_up"
    old = {**d, "state": {**d["state"], "status": "terminate"}}
    u = SessionRiskTracker.from_dict(old)
    assert u.state.status == "terminate" and u.update([ModalityEvidence("keystroke", 0.0, llr=5.0)]).status == "terminate"
    with pytest.raises(ValueError, match="state.status"):  # but not a terminate the risk never reached
        SessionRiskTracker.from_dict({**old, "llrs": [0.0], "state": {**old["state"], "risk": 0.5}})


def test_a_terminated_session_is_flagged_audited_and_closes_enrolment(client: TestClient, enrolled, windows,  # type: ignore[no-untyped-def]
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ending a session had no consequence: nothing flagged or audited, and whoever ended it could enrol.

    It does not count toward the lockout: owners' own sessions end now and then (1.1 % of
    owners' 10-update sessions in `cadence bench sessions`), and five of those locked the owner out.
    """
    from sqlalchemy import select

    from compliance.audit import AuditEntry
    from server.models import SecurityFlag, User

    real = svc.assess_evidence

    def impostor(*a: Any, **k: Any):  # type: ignore[no-untyped-def]
        out = real(*a, **k)  # evidence as far from the owner as a score can be: one window ends the session
        out.evidence = [dataclasses.replace(e, score=float("-inf")) for e in out.evidence]
        return out

    monkeypatch.setattr(svc, "assess_evidence", impostor)
    fresh = itertools.chain(windows["other"]["keystroke"][5:], windows["owner"]["keystroke"][10:])  # 45 unseen
    for _ in range(6):  # a session ends on a full window (5): held in step-up before
        sid = _new_session(enrolled)
        statuses = []
        for _ in range(THRESHOLDS["window"]):
            r = _post(enrolled, sid, [next(fresh).to_dict()])
            assert r.status_code == 200, r.text
            statuses.append(r.json()["status"])
        assert statuses == ["step_up"] * 4 + ["terminate"], statuses
    with client.app.state.cadence.sessions() as db:  # type: ignore[attr-defined]
        user = db.get(User, enrolled.user_id)
        assert not user.locked and user.consecutive_failures == 0 and not user.enrolment_open
        kinds = db.scalars(select(SecurityFlag.kind).where(SecurityFlag.user_id == enrolled.user_id)).all()
        assert kinds.count("session_terminated") == 6
        events = db.scalars(select(AuditEntry.event).where(AuditEntry.event == "session.terminated")).all()
        assert len(events) == 6
    r = enrolled.signed("POST", "/v1/users/alice/enrolment", {"windows": [next(fresh).to_dict()]})
    assert r.status_code == 409 and r.json()["code"] == "enrolment_closed", r.text
    assert "first transaction" not in r.json()["detail"]  # it said so of a user who never made one
    assert "continuous session is terminated" in r.json()["detail"]


def test_a_session_between_enrolment_parts_leaves_enrolment_open(client: TestClient, windows) -> None:  # type: ignore[no-untyped-def]
    """Enrolment may come in several parts (docs/api.md); a session in between must not close it."""
    from tests.server.conftest import new_device

    dev = new_device(client, "parts")
    for m in ("keystroke", "touch"):
        dev.grant_consent(m)
    dev.enrol(windows["owner"]["keystroke"][:5])
    sid = _new_session(dev)
    assert _post(dev, sid, [windows["owner"]["keystroke"][20].to_dict()]).json()["scored_windows"] == 1
    dev.enrol(windows["owner"]["touch"][:5])  # raises on 409


def test_windows_without_usable_evidence_are_counted_but_not_scored(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """Nothing but unusable windows verifies nobody: the session stays `pending` (it said `ok`)."""
    sid = _new_session(enrolled)
    for i in range(3):
        w = windows["other"]["keystroke"][22 + i].to_dict()
        w["quality"] = 0.0
        out = _post(enrolled, sid, [w]).json()
    assert (out["status"], out["windows"], out["scored_windows"]) == ("pending", 3, 0)
    got = enrolled.signed("GET", f"/v1/sessions/{sid}").json()
    assert (got["windows"], got["scored_windows"]) == (3, 0)
    # counts are of windows, not posts: one post of three usable windows
    both = _post(enrolled, sid, [windows["owner"]["keystroke"][25].to_dict(), windows["owner"]["gait"][25].to_dict(),
                                 windows["owner"]["gait"][26].to_dict()]).json()
    assert (both["status"], both["windows"], both["scored_windows"]) == ("ok", 6, 3), both
    # touch counts in units of 5 swipes: fewer are received, not scored (`too_few_for_decision`)
    few = _post(enrolled, sid, [w.to_dict() for w in windows["owner"]["touch"][30:34]]).json()
    assert (few["windows"], few["scored_windows"]) == (10, 3), few


def test_only_the_device_that_opened_a_session_uses_it(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    from tests.server.conftest import new_device

    sid = _new_session(enrolled)
    second = new_device(client, enrolled.user_id)  # another device of the same user
    assert _post(second, sid, [windows["owner"]["keystroke"][26].to_dict()]).status_code == 404
    assert second.signed("GET", f"/v1/sessions/{sid}").status_code == 404
    assert enrolled.signed("GET", f"/v1/sessions/{sid}").status_code == 200


def test_a_locked_users_session_reads_as_locked(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """GET used to answer the stale `ok` while evidence posts got 423."""
    from server.models import User

    sid = _new_session(enrolled)
    with client.app.state.cadence.sessions() as db, db.begin():  # type: ignore[attr-defined]
        db.get(User, enrolled.user_id).locked = True
    r = enrolled.signed("GET", f"/v1/sessions/{sid}")
    assert r.status_code == 423 and r.json()["code"] == "user_locked"


def test_a_retry_of_the_last_post_is_answered_not_flagged(client: TestClient, enrolled, windows) -> None:  # type: ignore[no-untyped-def]
    """A client that lost the answer (timeout) and resends got 409 and a replay flag against its owner."""
    from sqlalchemy import select

    from server.models import SecurityFlag

    sid = _new_session(enrolled)
    sent = [windows["owner"]["keystroke"][28].to_dict(), windows["owner"]["gait"][20].to_dict()]
    first = _post(enrolled, sid, sent)
    again = _post(enrolled, sid, sent)
    assert first.status_code == again.status_code == 200 and again.json() == first.json(), again.text
    _post(enrolled, sid, [windows["owner"]["keystroke"][29].to_dict()])
    old = _post(enrolled, sid, sent)  # no longer the last post: replayed evidence, refused and flagged
    assert old.status_code == 409 and old.json()["code"] == "evidence_replay"
    with client.app.state.cadence.sessions() as db:  # type: ignore[attr-defined]
        flags = db.scalars(select(SecurityFlag.kind).where(SecurityFlag.user_id == enrolled.user_id)).all()
    assert flags == ["evidence_replay"]
