"""On-device pipeline without Kivy: pairing, features, encrypted store, signing, API client."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from cryptography.fernet import Fernet

from evaluation.synthetic import SyntheticPerson
from mobile_client import features
from mobile_client.api import ApiClient, ApiError, OfflineQueue, Queued
from mobile_client.clock import VirtualClock
from mobile_client.collectors import modality_of
from mobile_client.collectors.keys import KeyPairer
from mobile_client.collectors.replay import ReplaySource
from mobile_client.controllers.transaction import InputError, evidence_text, explain, parse_amount
from mobile_client.device_key import DeviceKey, canonical_request
from mobile_client.evidence import EvidenceBuffer
from mobile_client.raw_store import RawEventStore, RawStoreError
from mobile_client.secrets_store import FileSecretStore
from modalities.events import KeyEvent, TouchAction


def test_key_pairer_keeps_first_down_and_drops_orphans() -> None:
    p = KeyPairer()
    p.down("a", 1.0)
    p.down("a", 1.05)  # auto-repeat
    ev = p.up("a", 1.12)
    assert ev == KeyEvent("a", 1.0, 1.12)
    assert p.up("b", 2.0) is None  # up without down
    p.down("spacebar", 3.0)
    assert p.up("spacebar", 3.1).key == "space"
    # soft keyboard: text without key events gives zero-hold presses
    assert [e.key for e in p.text_commit("hi", 4.0)] == ["h", "i"]


def test_feature_windows_from_synthetic_events() -> None:
    person = SyntheticPerson(3)
    k = features.keystroke_windows(person.keystrokes(150, 1).to_events())
    t = features.touch_windows(person.touch(6, 1).to_events())
    g = features.gait_windows(person.walk(30, 100, 1).to_samples())
    assert len(k) == 3 and {w.modality for w in k} == {"keystroke"}  # 100 keys every 25: 0, 25, 50
    assert len(t) == 6 and all(w.n_events >= 3 for w in t)
    assert len(g) == 4 and all(w.quality > 0.5 for w in g)  # 0-10, 5-15, 10-20, 15-25 s
    assert features.quality_report("gait", g).ok
    assert not features.quality_report("touch", t[:2]).ok


def test_split_strokes_drops_multi_finger() -> None:
    evs = SyntheticPerson(1).touch(2, 0).to_events()
    first = [e for e in evs[: len(evs) // 2]]
    from dataclasses import replace

    spoiled = first[:2] + [replace(first[2], action=TouchAction.POINTER_DOWN)] + first[3:]
    assert len(features.split_strokes(evs)) == 2
    assert len(features.split_strokes(spoiled + evs[len(evs) // 2:])) <= 1


def test_raw_store_encrypts_retains_and_deletes(tmp_path) -> None:
    now = {"t": 1_000_000.0}
    secrets = FileSecretStore(tmp_path / "s")
    store = RawEventStore(tmp_path / "raw", secrets, retention_days=30, now=lambda: now["t"])
    evs = SyntheticPerson(2).keystrokes(40, 0).to_events()
    assert store.append(evs) == 40
    blob = next((tmp_path / "raw" / "keystroke").glob("*.bin")).read_bytes()
    assert b"press" not in blob  # encrypted at rest
    assert store.read("keystroke") == evs
    now["t"] += 31 * 86400
    store.append(SyntheticPerson(2).walk(2, 50, 0).to_samples())  # a write past the period sweeps it
    assert store.apply_retention() == 0
    assert store.summary().counts == {"keystroke": 0, "touch": 0, "gait": 100}
    store.delete_all()
    assert store.is_empty()


def test_raw_store_refuses_tampered_batch(tmp_path) -> None:
    secrets = FileSecretStore(tmp_path / "s")
    store = RawEventStore(tmp_path / "raw", secrets)
    store.append(SyntheticPerson(2).keystrokes(5, 0).to_events())
    f = next((tmp_path / "raw" / "keystroke").glob("*.bin"))
    f.write_bytes(f.read_bytes()[:-5] + b"AAAAA")
    # a tampered batch is never read: it is skipped and counted, not the whole modality refused
    assert store.read("keystroke") == [] and store.summary().unreadable == 1
    # a key that opens none of the store's batches (not its own) is refused
    store.append(SyntheticPerson(2).keystrokes(5, 1).to_events())
    secrets.put("raw-store-key", Fernet.generate_key())
    with pytest.raises(RawStoreError, match="cannot be decrypted"):
        RawEventStore(tmp_path / "raw", secrets).read("keystroke")


def test_signature_matches_server_scheme(tmp_path) -> None:
    signing = pytest.importorskip("server.signing")
    key = DeviceKey(FileSecretStore(tmp_path))
    assert canonical_request("post", "/v1/x", b"{}", "1", "n") == signing.canonical_request("post", "/v1/x", b"{}", "1", "n")
    h = key.sign_headers("dev-1", "POST", "/v1/x", b'{"a":1}', timestamp=100, nonce="abc")
    pub = signing.load_public_key(key.public_key_b64)
    signing.verify_signature(pub, signing.canonical_request("POST", "/v1/x", b'{"a":1}', "100", "abc"),
                             h[signing.HEADER_SIGNATURE])
    assert DeviceKey(FileSecretStore(tmp_path)).public_key_b64 == key.public_key_b64  # persisted


def _client(tmp_path, handler, retries=2) -> ApiClient:
    key = DeviceKey(FileSecretStore(tmp_path / "s"))
    return ApiClient("http://bank.test", key, "dev-1", "user-1", OfflineQueue(tmp_path / "q.jsonl"),
                     retries=retries, backoff_s=0.0, transport=httpx.MockTransport(handler), sleep=lambda s: None)


def test_api_retries_with_fresh_nonce_then_succeeds(tmp_path) -> None:
    nonces: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        nonces.append(req.headers["X-Cadence-Nonce"])
        return httpx.Response(503) if len(nonces) < 3 else httpx.Response(201, json={"ok": True})

    assert _client(tmp_path, handler).set_consent("gait", "authentication", True) == {"ok": True}
    assert len(set(nonces)) == 3


def test_api_queues_offline_and_flushes(tmp_path) -> None:
    state = {"up": False, "seen": []}

    def handler(req: httpx.Request) -> httpx.Response:
        if not state["up"]:
            raise httpx.ConnectError("down")
        state["seen"].append(json.loads(req.content))
        return httpx.Response(201, json={})

    c = _client(tmp_path, handler)
    assert isinstance(c.set_consent("touch", "authentication", False), Queued)
    assert len(c.queue) == 1
    state["up"] = True
    assert c.flush_queue() == 1 and len(c.queue) == 0
    assert state["seen"][0]["modality"] == "touch" and state["seen"][0]["granted"] is False


def test_api_4xx_is_not_retried_and_names_reason(tmp_path) -> None:
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(422, json={"detail": "values: expected 45 features"})

    with pytest.raises(ApiError, match="expected 45 features") as exc:
        _client(tmp_path, handler).enrol(features.touch_windows(SyntheticPerson(1).touch(1, 0).to_events()))
    assert exc.value.status == 422 and len(calls) == 1


def test_amount_parsing_and_reasons() -> None:
    assert parse_amount("£1,250.5") == "1250.50"
    for bad in ("", "abc", "-3", "0", "1.234"):
        with pytest.raises(InputError) as exc:
            parse_amount(bad)
        assert exc.value.field == "amount"
    assert explain({"modality": "gait", "code": "low_score"}) == "Walking pattern did not match your usual pattern"
    assert explain({"modality": "fusion", "code": "uncorroborated"}).startswith("Overall evidence rested on one signal")
    assert explain({"modality": "keystroke", "code": "uncalibrated"}) == "Typing rhythm is being updated and was not used this time"
    assert evidence_text({"keystroke": 2, "touch": 3, "gait": 1}) == "Checked on this phone: 2 typing samples, 3 swipes, 1 walking sample"
    assert evidence_text({"keystroke": 0, "touch": 0, "gait": 0}) == "No recent behaviour to check"


def test_replay_source_places_recording_on_session_clock() -> None:
    clock = VirtualClock(500.0)
    walk = SyntheticPerson(4).walk(3, 50, 0)
    got: list = []
    n = ReplaySource(walk, clock=clock).play_all(got.append)
    assert n == len(walk) and got[0].time == pytest.approx(500.0)
    assert np.allclose(np.diff([s.time for s in got]), np.diff(walk.t))
    assert {modality_of(e) for e in got} == {"gait"}


def test_evidence_buffer_respects_consent_and_marks() -> None:
    allowed = {"keystroke"}
    buf = EvidenceBuffer(None, allowed=lambda m: m in allowed)
    buf.extend(SyntheticPerson(1).walk(1, 50, 0).to_samples())
    assert buf.count("gait") == 0  # not consented: dropped at the door
    keys = SyntheticPerson(1).keystrokes(30, 0).to_events()
    buf.extend(keys[:10])
    buf.mark("keystroke")
    buf.extend(keys[10:])
    assert buf.since_mark("keystroke") == keys[10:]
    assert buf.keys(5) == keys[-5:]


def test_federated_device_file_holds_only_this_devices_features(tmp_path) -> None:
    fed = pytest.importorskip("federated.features")
    from mobile_client.federation import export_windows, supernode_command

    windows = features.keystroke_windows(SyntheticPerson(1).keystrokes(200, 0).to_events())
    f = export_windows(tmp_path, windows, "keystroke")
    X = fed.read_device_file(f, "keystroke")
    assert X.shape == (len(windows), windows[0].values.shape[0])
    assert np.allclose(X, np.vstack([w.values for w in windows]))
    cmd = supernode_command("127.0.0.1:9300", f, tmp_path / "fw", 9401)
    assert cmd[1:4] == ["federated", "supernode", "--workdir"] and "--data" in cmd
    with pytest.raises(ValueError, match="no gait windows"):
        export_windows(tmp_path, windows, "gait")


def test_a_pasted_decomposed_payee_is_sent_in_the_form_the_bank_takes() -> None:
    """"Cafe" + a combining accent (pasted, or some keyboards) is sent as NFC "Café", which the bank requires."""
    from mobile_client.controllers.transaction import parse_payee

    assert parse_payee("  Cafe\u0301   Noir ") == "Caf\u00e9 Noir"
