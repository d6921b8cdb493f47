"""The federated-training consent text promises only what the deployed Flower app does.

"Deployed" is what `flwr run federated/app` (and `cadence federated run`) ships: the
components named in ``federated/app/pyproject.toml`` with its run-config defaults; the
person's device is what the desktop app starts (`mobile_client.federation.supernode_command`,
SecAgg+ runs only). The facts are read from the code, not restated here, so the text must
change when the code does (the app's device joining plain runs, DP made the default) and
vice versa.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import Strategy
from sqlalchemy.orm import Session, sessionmaker

from compliance.consent import consents_of, grant_consent, has_consent, policy_text
from compliance.models import ConsentRecord
from federated import task
from federated.config import RunSettings
from federated.deployment import APP_DIR, app_config
from federated.features import feature_spec, subject_windows, write_device_file
from federated.records import array_record, get_array
from federated.strategies.dp import wrap_dp
from federated.strategies.fedavg import FedAvgRecipe
from tests.federated.conftest import task_identity  # noqa: F401  (Messages are built inside a run)

TEXT = policy_text("federated_training").text
#: the version of the text that promised SecAgg+ and DP; grants recorded under it stay valid
OLD_VERSION = "2026-11-01"
#: a sentence promising that updates are combined (or hidden) before the server gets them
SECAGG_PROMISE = re.compile(r"secure(ly)? aggregat|added together|before anyone sees|cannot be traced|masked", re.I)
#: a sentence telling the person that the server gets their device's update alone
SERVER_SEES_UPDATE = re.compile(r"server\b.*\b(on its own|before it is combined)", re.I)
NOISE = re.compile(r"\bnoise\b|differential privacy", re.I)
CONDITIONAL = re.compile(r"\b(may|can choose|when|if|only in|in such runs|not always)\b", re.I)
NEGATION = re.compile(r"\b(not|no|without)\b", re.I)
#: what SecAgg+ protects against is a server that runs the published software: the text must say so,
#: and that a changed server (which picks the code the device runs) could read or take more
RELIES_ON_PUBLISHED = re.compile(r"follow(s|ing) the published rules", re.I)
CHANGED_SOFTWARE = re.compile(r"changed its training server.*read your device's update", re.I | re.S)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.;:])\s+|\n\s*-\s*", " ".join(text.split("\n"))) if s.strip()]


def deployed(component: str) -> Any:
    """The object `flwr run` starts for `component` ("serverapp", "clientapp")."""
    ref = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"][component]
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def securely_aggregates(client_app: ClientApp) -> bool:
    """SecAgg+ needs `secaggplus_mod` on every device; without it the server gets each update in the clear."""
    return secaggplus_mod in client_app._mods


def test_the_secagg_check_tells_the_secagg_app_from_the_deployed_one() -> None:
    from federated.secagg import make_client_app

    assert securely_aggregates(make_client_app())  # the SecAgg+ app (`cadence federated run --secagg`)
    assert not securely_aggregates(deployed("clientapp"))


def app_device_sends_masked_updates_only(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether the desktop app's device reaches the server only through SecAgg+ (what the text promises).

    Followed from the app to Flower: the command the app starts (`supernode_command`), the
    flower-supernode command that `cadence federated supernode` then runs (captured, nothing
    starts), its node config, and what the deployed plain ClientApp does with that node config
    (it must answer nothing: neither the scaling round nor a training round), while the SecAgg+
    app of `run --secagg` masks every update.
    """
    from typer.testing import CliRunner

    from cadence.cli import app
    from federated.client_app import PlainRunRefused
    from federated.deployment import SECAGG_APP_DIR, free_port
    from mobile_client.federation import supernode_command
    from tests.federated.conftest import flower_commands

    ca = workdir / "ca.crt"
    cmd = supernode_command("127.0.0.1:9092", workdir / "d.npz", workdir / "flower", free_port(), ca=ca)
    cmds = flower_commands(monkeypatch)
    monkeypatch.setattr("cadence.commands.federated._supernode_ca", lambda *a: ca)
    result = CliRunner().invoke(app, cmd[1:])  # `cadence federated supernode ...` as the app runs it
    assert result.exit_code == 0, result.output  # the command itself must work, or this check says nothing
    node = next((c for c in cmds if "flower-supernode" in c), None)
    if node is None or "federated.pinned_app" not in node[:node.index("flower-supernode")]:
        return False  # a SuperNode that runs whatever app a run ships: no check of ours binds it
    config = tomllib.loads(node[node.index("--node-config") + 1].replace(" ", "\n"))
    ctx = Context(run_id=1, node_id=1, node_config=config, state=RecordDict(), run_config={})
    plain = deployed("clientapp")
    for msg_type in (MessageType.QUERY, MessageType.TRAIN, MessageType.EVALUATE):
        msg = Message(RecordDict({"config": ConfigRecord({"modality": "keystroke"})}), dst_node_id=1,
                      message_type=msg_type)
        try:
            plain(msg, ctx)
        except PlainRunRefused:
            continue
        return False
    components = tomllib.loads((SECAGG_APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    module, _, attr = components["clientapp"].partition(":")
    return securely_aggregates(getattr(importlib.import_module(module), attr))


def test_consent_promises_secure_aggregation_only_if_the_apps_device_applies_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task_identity: None) -> None:  # noqa: F811
    promises = [s for s in sentences(TEXT) if SECAGG_PROMISE.search(s) and not NEGATION.search(s)]
    masked = app_device_sends_masked_updates_only(tmp_path, monkeypatch)
    assert bool(promises) == masked, promises
    if masked:
        assert not any(SERVER_SEES_UPDATE.search(s) for s in sentences(TEXT)), "the server never reads one update"
        # SecAgg+ holds against a server running the published software (Flower's has no checks against one that
        # deviates, and the run's app is the server's to choose): a promise without that condition is false
        assert RELIES_ON_PUBLISHED.search(" ".join(TEXT.split())), "say what the protection relies on"
        assert CHANGED_SOFTWARE.search(" ".join(TEXT.split())), "say what a changed server could do"
    else:
        assert any(SERVER_SEES_UPDATE.search(s) for s in sentences(TEXT)), "say that the server sees each update"


def test_the_masked_updates_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           task_identity: None) -> None:  # noqa: F811
    """With the app starting its SuperNode without --secagg-only again, or without the pinned app, the check says so."""
    from mobile_client import federation

    real = federation.supernode_command
    monkeypatch.setattr(federation, "supernode_command",
                        lambda *a, **k: [c for c in real(*a, **k) if c != "--secagg-only"])
    assert not app_device_sends_masked_updates_only(tmp_path, monkeypatch)


def test_consent_promises_noise_only_as_the_deployed_default_gives_it() -> None:
    dp_by_default = bool(app_config()["dp"]) or RunSettings().dp
    noise_claims = [s for s in sentences(TEXT) if NOISE.search(s)]
    if not dp_by_default:
        assert all(CONDITIONAL.search(s) for s in noise_claims), f"noise is off by default: {noise_claims}"
    # the noise is added by a server-side strategy, to what the devices sent: never "before the server sees it"
    s = RunSettings(dp=True, min_nodes=3)
    assert isinstance(wrap_dp(FedAvgRecipe().build(s), s, 3, robust=False), Strategy)
    assert not [c for c in noise_claims if SECAGG_PROMISE.search(c) or re.search(r"before .*(server|sees)", c)]


def deployed_connections_use_tls(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    """What `cadence federated superlink` / `supernode` / `flwr` do with their default options.

    The Flower commands they would start are captured (nothing starts): TLS when the SuperLink
    serves a certificate, every SuperNode verifies it and `flwr` too, and none says ``--insecure``.
    """
    from typer.testing import CliRunner

    from cadence.cli import app
    from federated import deployment as d
    from tests.federated.conftest import flower_commands

    cmds = flower_commands(monkeypatch)
    runner = CliRunner()
    runner.invoke(app, ["federated", "superlink", "--workdir", str(workdir), "--port", str(d.free_port())])
    runner.invoke(app, ["federated", "supernode", "--workdir", str(workdir), "--data", str(workdir / "d.npz"),
                        "--port", str(d.free_port())])
    conn = tomllib.loads((workdir / "flwr-home" / "config.toml").read_text())["superlink"][d.FEDERATION]
    link, node = (next((c for c in cmds if c[0] == name), []) for name in ("flower-superlink", "flower-supernode"))
    return (bool(link and node) and not any("--insecure" in c for c in (link, node))
            and "--ssl-certfile" in link and "--root-certificates" in node
            and conn.get("insecure") is False and bool(conn.get("root-certificates")))


def test_consent_says_whether_the_connection_is_encrypted_as_the_deployment_connects(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = deployed_connections_use_tls(tmp_path / "fw", monkeypatch)
    says_unencrypted = any(re.search(r"\bnot encrypted\b|\bunencrypted\b", s) for s in sentences(TEXT))
    says_encrypted = any(re.search(r"\bis encrypted\b", s) for s in sentences(TEXT))
    assert (says_encrypted, says_unencrypted) == (tls, not tls)


def test_the_tls_check_tells_an_insecure_deployment_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: with the commands hard-coding `--insecure` again it says so."""
    from federated import deployment as d

    real_link, real_node = d.superlink_cmd, d.supernode_cmd
    monkeypatch.setattr(d, "superlink_cmd", lambda *a, tls, **k: real_link(*a, tls=None, **k))
    monkeypatch.setattr(d, "supernode_cmd", lambda *a, root_certificates, **k: real_node(*a, root_certificates=None, **k))
    assert not deployed_connections_use_tls(tmp_path / "fw", monkeypatch)


def test_the_apps_device_sends_its_sums_readable_and_its_model_only_masked(
        data_dir: Path, tmp_path: Path, task_identity: None) -> None:  # noqa: F811
    """What the text says the server sees: one person's feature sums in the clear, the trained model never alone."""
    from federated.client_app import PlainRunRefused
    from federated.secagg import client_app as secagg_client_app

    spec = feature_spec("keystroke")
    X = subject_windows("keystroke", data_dir, [1])[1]
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                  node_config={"data": str(write_device_file(tmp_path / "d.npz", X, spec, 1)), "secagg-only": True})
    query = Message(RecordDict({"config": ConfigRecord({"modality": "keystroke"})}), dst_node_id=1,
                    message_type=MessageType.QUERY)
    sums = array_record(secagg_client_app(query, ctx).content, "sums")  # the SecAgg+ run's scaling round
    np.testing.assert_allclose(get_array(sums, "sum"), X.astype(np.float64).sum(0), rtol=1e-4)

    norm = task.Normaliser.fit(X)
    init = task.initial_weights(spec.dim, 64, 0)
    cfg = ConfigRecord({"modality": "keystroke", "norm-mean": [float(v) for v in norm.mean],
                        "norm-std": [float(v) for v in norm.std], "hidden": 64, "slot": 5, "local-epochs": 3,
                        "lr": 0.05, "batch-size": 16, "seed": 0, "server-round": 1, "num-slots": 128})
    train = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in init.items()}), "config": cfg}),
                    dst_node_id=1, message_type=MessageType.TRAIN)
    with pytest.raises(PlainRunRefused, match="SecAgg\\+ runs only"):
        deployed("clientapp")(train, ctx)  # a plain run's training round: no readable model leaves
    # without secagg-only (an operator's own SuperNode) the plain app sends a usable model of this person
    plain_ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                        node_config={"data": ctx.node_config["data"]})
    sent = task.to_numpy(array_record(deployed("clientapp")(train, plain_ctx).content, "arrays"))
    protos = task.prototypes(128)

    def loss(weights: dict[str, np.ndarray]) -> float:
        net = task.make_net(spec.dim, hidden=64)
        task.set_weights(net, weights)
        return task.test(net, norm(X), 5, protos)["loss"]

    assert loss(sent) < 0.9 * loss(init)


def test_grants_of_the_old_text_still_count_and_a_new_grant_supersedes_them(
        sqlite_factory: sessionmaker[Session]) -> None:
    new = policy_text("federated_training").version
    assert new > OLD_VERSION
    with sqlite_factory() as s, s.begin():
        s.add(ConsentRecord(user_id="u1", modality="keystroke", purpose="federated_training",
                            policy_version=OLD_VERSION, granted_at=datetime(2026, 11, 2, tzinfo=UTC)))
        s.flush()
        assert has_consent(s, user_id="u1", modality="keystroke", purpose="federated_training")
        with pytest.raises(ValueError, match="policy_version"):  # nobody can agree to the old text any more
            grant_consent(s, user_id="u2", modality="keystroke", purpose="federated_training", policy_version=OLD_VERSION)
        grant_consent(s, user_id="u1", modality="keystroke", purpose="federated_training", policy_version=new)
        rows = consents_of(s, "u1")
        assert [(r["policy_version"], r["active"]) for r in rows] == [(OLD_VERSION, False), (new, True)]
