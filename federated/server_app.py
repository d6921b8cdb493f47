"""Flower ServerApp (Message API): reads the run config and runs `orchestration.run_training`.

Wiring only. `make_app(defaults, on_result)` lets the simulation (bench, tests) pass settings
and collect the outcome in-process; `runs` trains several models one after the other on the
same connected devices (the bench's FedAvg and DP-FedAvg rows share one simulation, so the
devices start once). The module-level `app` is what ``flwr run`` starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federated.config import RunSettings, status_path
from federated.orchestration import RunOutcome, StatusFile, run_training


def make_app(defaults: Mapping[str, Any] | None = None,
             on_result: Callable[[RunOutcome], None] | None = None,
             runs: Sequence[Mapping[str, Any]] = ({},)) -> ServerApp:
    """A ServerApp whose settings are `defaults`, then each of `runs`, overridden by the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_id = context.run_id
        for run in runs:
            try:
                # SecAgg+ is not applied here (federated/secagg.py is): its keys are refused, not ignored
                settings = RunSettings.from_config(defaults or {}, run, dict(context.run_config), applies_secagg=False)
            except Exception as exc:  # a bad value: say so where `cadence federated run` is waiting
                template = str({**(defaults or {}), **run, **dict(context.run_config)}.get("status-file", ""))
                StatusFile(str(status_path(template, run_id)) if template else "", run_id).fail(exc)
                raise
            if settings.status_file:  # `status-{run-id}.json`: this run's own file, whatever else runs
                settings = replace(settings, status_file=str(status_path(settings.status_file, run_id)))
            outcome = run_training(grid, settings, run_id=run_id)  # writes 'failed' itself on any error
            if on_result is not None:
                on_result(outcome)

    return app


app = make_app()
