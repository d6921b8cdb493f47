"""Run settings of a federated job: one typed object parsed from Flower's run config.

Keys are kebab-case, as in ``[tool.flwr.app.config]`` of ``federated/app/pyproject.toml``,
and can be overridden with ``flwr run ... --run-config "num-server-rounds=5"`` or the
``cadence federated run`` options. Unknown or ill-typed values fail with the key's name.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from federated.features import check_modality

STRATEGY_NAMES = ("fedavg", "fedprox", "fedmedian", "trimmed-mean", "krum")
WEIGHTINGS = ("unit", "num-examples")
#: robust rules have no bounded sensitivity to calibrate DP noise to (`strategies/dp.py` refuses them too)
DP_REFUSED_STRATEGIES = ("fedmedian", "trimmed-mean", "krum")
#: the most epsilon (at `dp-delta`, over all rounds) a run may spend and still be published as DP:
#: beyond it the guarantee bounds nothing (e^50 ~ 5e21) while the model card would still say "DP"
MAX_EPSILON = 50.0
#: SecAgg+ settings: applied by `federated/secagg.py` (the app of `cadence federated run --secagg`,
#: ``federated/app-secagg``, and the simulation's SecAgg+ option), refused by the plain app
SECAGG_KEYS = ("num-shares", "reconstruction-threshold")
#: fewest devices in a SecAgg+ round: with two, each learns the other's update from the new global model
SECAGG_MIN_DEVICES = 3
#: most devices whose masked updates (2^22 levels each) add up within Flower's 2^32 modulus
SECAGG_MAX_DEVICES = 2**32 // 2**22


class SettingsError(ValueError):
    """A run-config value is missing, of the wrong type, or out of range."""


@dataclass(frozen=True)
class RunSettings:
    """Everything the ServerApp and ClientApp read from the run config."""

    modality: str = "keystroke"
    num_server_rounds: int = 3
    strategy: str = "fedavg"
    fraction_train: float = 1.0
    #: how mean-based strategies weigh device updates: "unit" (each device's one-epoch update
    #: already grows with its window count, so equal weights match the pooled objective where
    #: every window counts once) or "num-examples" (classic FedAvg; a device with twice the
    #: windows then counts four times). DP always uses unit weights.
    weighting: str = "unit"
    min_nodes: int = 2
    local_epochs: int = 1
    lr: float = 0.05
    batch_size: int = 16
    hidden: int = 64
    num_slots: int = 128
    seed: int = 0
    proximal_mu: float = 0.01
    server_momentum: float = 0.0
    server_lr: float = 1.0
    trim_beta: float = 0.2
    krum_byzantine: int = 1
    dp: bool = False
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    dp_delta: float = 1e-3
    #: >= 0: seed the server's DP noise (benchmarks only: anyone who knows the seed can take
    #: the noise off again, so there is no privacy); -1 (default): fresh OS entropy
    dp_noise_seed: int = -1
    num_shares: int = 3
    reconstruction_threshold: int = 2
    feature_dir: str = ""
    registry: str = ""
    status_file: str = ""
    round_timeout: float = 600.0

    @classmethod
    def from_config(cls, *configs: Mapping[str, Any], applies_secagg: bool = True) -> RunSettings:
        """Merge configs (later ones win) and validate; keys use dashes, not underscores.

        `applies_secagg` False (the Message-API ServerApp): SecAgg+ keys set away from their
        defaults are refused first, since nothing would apply them.
        """
        merged: dict[str, Any] = {}
        for c in configs:
            merged.update({str(k): v for k, v in c.items()})
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in merged.items():
            f = known.get(key)
            if f is None:
                continue  # other apps' keys are not ours to refuse
            values[f.name] = _coerce(key, raw, type(getattr(cls(), f.name)))
        s = cls(**values)
        if not applies_secagg:
            s.refuse_secagg()
        s.validate()
        return s

    def refuse_secagg(self) -> None:
        """Refuse SecAgg+ keys set where SecAgg+ is not applied: the updates would travel in the clear."""
        default = RunSettings()
        changed = [k for k in SECAGG_KEYS if getattr(self, k.replace("-", "_")) != getattr(default, k.replace("-", "_"))]
        if changed:
            raise SettingsError(f"{', '.join(changed)}: SecAgg+ is not applied by this app (the Message-API ServerApp "
                                f"of `flwr run federated/app`): run with `cadence federated run --secagg` (the app "
                                f"federated/app-secagg), or leave {' and '.join(changed)} out")

    def check_secagg_run(self) -> None:
        """Refuse what the SecAgg+ app cannot do, by key, before any device is asked for anything.

        The server sees only the sum of the devices' masked updates, so rules that look at each
        update (the robust strategies) and weights the devices would have to reveal are not
        available; neither is a server optimiser the legacy workflow does not run (momentum, a
        server learning rate) or client sampling. DP is (`secagg.DPRelease`).
        """
        default = RunSettings()
        if self.strategy != "fedavg":
            raise SettingsError(f"strategy: SecAgg+ runs fedavg only (the server sees the sum of the updates, never one "
                                f"update: {self.strategy} needs each), got {self.strategy!r}")
        for key in ("weighting", "server-momentum", "server-lr", "fraction-train"):
            name = key.replace("-", "_")
            if getattr(self, name) != getattr(default, name):
                raise SettingsError(f"{key}: not available with SecAgg+ (it runs plain fedavg over every device of "
                                    f"the run with equal weights), got {getattr(self, name)!r}; leave {key} out")
        if self.min_nodes < SECAGG_MIN_DEVICES:
            raise SettingsError(f"min-nodes: SecAgg+ needs at least {SECAGG_MIN_DEVICES} devices per round (with 2, "
                                f"each could work out the other's update from the published model), got {self.min_nodes}")
        if self.num_slots > SECAGG_MAX_DEVICES or self.num_shares > SECAGG_MAX_DEVICES:
            raise SettingsError(f"num-slots, num-shares: at most {SECAGG_MAX_DEVICES} under SecAgg+ (the masked sum of "
                                f"more devices overflows Flower's 2^32 range at 2^22 levels), got {self.num_slots}, "
                                f"{self.num_shares}")
        if self.reconstruction_threshold > self.min_nodes:
            raise SettingsError(f"reconstruction-threshold: {self.reconstruction_threshold} devices must take part to "
                                f"unmask a sum, but a round may go on with min-nodes {self.min_nodes}; set min-nodes "
                                f"{self.reconstruction_threshold} or more")

    def check_epsilon(self, eps: float) -> None:
        """Refuse a DP run spending more than `MAX_EPSILON`: it would be published as DP yet protect nobody."""
        if not eps <= MAX_EPSILON:  # inf and NaN too
            raise SettingsError(f"noise-multiplier: {self.noise_multiplier:g} spends epsilon {eps:.3g} over "
                                f"{self.num_server_rounds} round(s) at dp-delta {self.dp_delta:g}; a DP run may spend "
                                f"at most {MAX_EPSILON:g} (raise noise-multiplier or lower num-server-rounds)")

    def validate(self) -> None:
        check_modality(self.modality)
        if self.strategy not in STRATEGY_NAMES:
            raise SettingsError(f"strategy: unknown {self.strategy!r}; expected one of {', '.join(STRATEGY_NAMES)}")
        for key, v, lo in (("num-server-rounds", self.num_server_rounds, 1), ("min-nodes", self.min_nodes, 1),
                           ("local-epochs", self.local_epochs, 1), ("batch-size", self.batch_size, 1),
                           ("hidden", self.hidden, 1), ("num-slots", self.num_slots, 2)):
            if v < lo:
                raise SettingsError(f"{key}: must be >= {lo}, got {v}")
        if self.weighting not in WEIGHTINGS:
            raise SettingsError(f"weighting: unknown {self.weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
        # NaN compares false with everything, so every float is checked finite first: `nan <= 0`
        # let a NaN noise multiplier through and published a model of NaN weights
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"{f.name.replace('_', '-')}: must be a finite number, got {value}")
        if not 0 < self.fraction_train <= 1:
            raise SettingsError(f"fraction-train: must be in (0, 1], got {self.fraction_train}")
        for key, x in (("lr", self.lr), ("clipping-norm", self.clipping_norm), ("server-lr", self.server_lr),
                       ("round-timeout", self.round_timeout)):
            if x <= 0:
                raise SettingsError(f"{key}: must be > 0, got {x}")
        if self.noise_multiplier < 0:
            raise SettingsError(f"noise-multiplier: must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.dp_delta < 1:
            raise SettingsError(f"dp-delta: must be in (0, 1), got {self.dp_delta}")
        if not 0 <= self.server_momentum < 1:
            raise SettingsError(f"server-momentum: must be in [0, 1), got {self.server_momentum}")
        if not 0 <= self.trim_beta < 0.5:
            raise SettingsError(f"trim-beta: must be in [0, 0.5), got {self.trim_beta}")
        if self.proximal_mu < 0:
            raise SettingsError(f"proximal-mu: must be >= 0, got {self.proximal_mu}")
        if self.krum_byzantine < 0:
            raise SettingsError(f"krum-byzantine: must be >= 0, got {self.krum_byzantine}")
        self._check_secagg_values()
        if self.min_nodes > self.num_slots:  # it would wait for them all, then find no prototype for the last
            raise SettingsError(f"min-nodes: {self.min_nodes} devices need at least as many slots, got num-slots "
                                f"{self.num_slots}")
        if self.dp:
            # without noise there is no privacy, yet the model would be labelled DP
            if self.noise_multiplier <= 0:
                raise SettingsError(f"noise-multiplier: DP needs noise > 0, got {self.noise_multiplier} "
                                    f"(no noise is no privacy; leave out dp instead)")
            if self.strategy in DP_REFUSED_STRATEGIES:
                raise SettingsError(f"strategy: DP noise is calibrated to a mean; use fedavg or fedprox with dp, "
                                    f"not {self.strategy}")
            if self.fraction_train == 1:  # every device every round (q = 1): the epsilon is known now
                from federated.privacy import epsilon

                self.check_epsilon(epsilon(rounds=self.num_server_rounds, q=1.0,
                                           noise_multiplier=self.noise_multiplier, delta=self.dp_delta))
        self._check_robust_quorum()

    def _check_robust_quorum(self) -> None:
        """Refuse a robust rule that a round of `min-nodes` devices would turn into a plain mean."""
        from federated.strategies import RECIPES  # the recipes know their own minimum

        need, why = RECIPES[self.strategy].min_devices(self)
        if self.min_nodes < need:
            raise SettingsError(f"min-nodes: {why}; a round may go on with min-nodes {self.min_nodes} devices: "
                                f"set min-nodes {need} or more")

    def _check_secagg_values(self) -> None:
        """Flower's SecAgg+ rules, by our key names: more than 2 shares, 2 <= threshold < shares < 2 x threshold."""
        if self.num_shares < 3:
            raise SettingsError(f"num-shares: must be >= 3, got {self.num_shares}")
        if not 2 <= self.reconstruction_threshold < self.num_shares:
            raise SettingsError(f"reconstruction-threshold: {self.reconstruction_threshold} must be >= 2 and below "
                                f"num-shares {self.num_shares}")
        held = 2 * (self.num_shares // 2) + 1  # Flower makes the count odd (`secagg.shares_per_device`)
        if held >= 2 * self.reconstruction_threshold:
            # the holders of a device's secrets could then give the server a threshold of shares of each:
            # its self-mask seed and its key, i.e. its update unmasked, to a server telling them different lists
            raise SettingsError(f"num-shares: {self.num_shares} ({held} shares per device) with "
                                f"reconstruction-threshold {self.reconstruction_threshold} let a server that lies about "
                                f"who dropped out rebuild both of a device's secrets ({held} >= 2 x "
                                f"{self.reconstruction_threshold}); use fewer shares or a threshold above {held // 2}")

    def as_config(self) -> dict[str, Any]:
        """Back to a kebab-case run config (what `flwr run --run-config` takes)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def _coerce(key: str, raw: Any, typ: type) -> Any:
    try:
        if typ is bool:
            if isinstance(raw, str):
                if raw.lower() in ("true", "1", "yes"):
                    return True
                if raw.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(raw)
            return bool(raw)
        if typ is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        return typ(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{key}: expected {typ.__name__}, got {raw!r}") from exc


#: in ``status-file``, replaced by the run's Flower run id (`status_path`): one status file per run
RUN_ID_PLACEHOLDER = "{run-id}"


def status_path(template: str, run_id: str | int) -> Path:
    """`template` with its ``{run-id}`` filled in (a path without it is used as it is)."""
    return Path(template.replace(RUN_ID_PLACEHOLDER, str(run_id)))


def run_config_string(config: Mapping[str, Any]) -> str:
    """Format a config for ``flwr run --run-config`` (TOML values, space separated)."""
    parts = []
    for k, v in config.items():
        if isinstance(v, bool):
            val = "true" if v else "false"
        elif isinstance(v, (int, float)):
            val = repr(v)
        else:
            val = '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{k}={val}")
    return " ".join(parts)


def write_json_atomic(path: Path, doc: Any, *, indent: int | None = 2, default: Any = None) -> None:
    """Write `doc` as JSON to `path` whole or not at all (a temporary file, then a rename).

    Status files are read while being written (`cadence federated status`, `wait_for_run`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=indent, default=default))
    os.replace(tmp, path)
