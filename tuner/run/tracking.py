"""MLflow tracking of a search (`--mlflow URI`, extra `[mlflow]`): a parent run per search (settings, plan), a nested
run per trial (Ray's MLflowLoggerCallback) and one for the final stage; <summary>/mlflow.json keeps the parent's ids."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mnist_net import files
from tuner.space import status_from_result

EXPERIMENT = "mnist-s5-tuner"
LINK_FILE = "mlflow.json"
CHECK_TIMEOUT_S = "5"  # the reachability check before the search; MLflow's default retries take minutes


def _client(uri: str):
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 refuses its file store unless asked; a user who names a folder asks for it
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def uri_arg(uri: str) -> str:
    """argparse type for --mlflow: the URI once MLflow can write there; a bad one ends the command before Ray starts."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise argparse.ArgumentTypeError("needs MLflow: pip install -e '.[mlflow]'") from None
    if uri.startswith("file:") or "://" not in uri:
        probe = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise argparse.ArgumentTypeError(f"{uri!r}: {probe} is not a writable folder")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=CHECK_TIMEOUT_S)
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as err:  # MlflowException, connection or permission errors: all mean "not usable"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise argparse.ArgumentTypeError(f"{uri!r} is not reachable or not writable: {first[:200]}") from None
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return uri


def start_search(uri: str, name: str, settings, plan, summary_dir: Path) -> str:
    """The parent run (reused on a --resume: its id is in mlflow.json); returns its id."""
    client, link = _client(uri), summary_dir / LINK_FILE
    if link.is_file():
        run_id = files.read_json(link, str(link))["parent_run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    found = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = found.experiment_id if found else client.create_experiment(EXPERIMENT)
    run_id = client.create_run(experiment_id, run_name=name, tags={"stage": "search"}).info.run_id
    record = settings.to_dict()
    for key, value in record.items():
        if key != "budget_plan" and value is not None:
            client.log_param(run_id, key, value)
    client.log_param(run_id, "plan", plan.describe()[:500])
    client.log_dict(run_id, {"settings": record, "plan": plan.describe()}, "search_settings.json")
    files.write_json(link, {"tracking_uri": uri, "experiment": EXPERIMENT, "parent_run_id": run_id})
    return run_id


def trial_callback(uri: str, parent_run_id: str, max_epochs: int):
    """Ray's MLflowLoggerCallback, each trial's run nested under the search's parent run."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class NestedTrials(MLflowLoggerCallback):
        def log_trial_end(self, trial, failed: bool = False):
            run_id = self._trial_runs.get(trial)
            if run_id is not None:
                _client(uri).set_tag(run_id, "status", status_from_result(trial.last_result, failed, max_epochs))
            super().log_trial_end(trial, failed)

    _client(uri)  # the file-store opt-in, before Ray's callback opens the store
    return NestedTrials(tracking_uri=uri, experiment_name=EXPERIMENT,
                        tags={"mlflow.parentRunId": parent_run_id, "stage": "trial"})


def end_search(uri: str, parent_run_id: str, best: dict | None, status: str = "FINISHED") -> None:
    """Close the parent run with the search's outcome (status KILLED for an interrupted search)."""
    client = _client(uri)
    if best is not None:
        client.log_metric(parent_run_id, "best_val_acc", best["val_acc"])
        client.log_metric(parent_run_id, "seed_config_val_acc", best["seed_config_val_acc"])
        for key, value in best["config"].items():
            client.set_tag(parent_run_id, f"best.{key}", value)
        client.set_tag(parent_run_id, "status_counts", json.dumps(best["search"]["status_counts"]))
    client.set_terminated(parent_run_id, status=status)


def log_final(uri: str, parent_run_id: str, report: dict, name: str = "confirm") -> str:
    """A nested run for the final stage: numbers as metrics, strings as tags (the verdict too), report.json; its id."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    run_id = client.create_run(parent.info.experiment_id, run_name=f"{parent.info.run_name}-{name}",
                               tags={"mlflow.parentRunId": parent_run_id, "stage": name}).info.run_id
    for key, value in report.items():
        if isinstance(value, (bool, str)):
            client.set_tag(run_id, key, str(value)[:5000])
        elif isinstance(value, (int, float)):
            client.log_metric(run_id, key, float(value))
    client.log_dict(run_id, report, "report.json")
    client.set_terminated(run_id)
    return run_id


def parent_of(summary_dir: Path) -> tuple[str, str] | None:
    """(tracking URI, parent run id) of a search tracked with --mlflow, else None."""
    link = Path(summary_dir) / LINK_FILE
    if not link.is_file():
        return None
    record = files.read_json(link, str(link))
    return record["tracking_uri"], record["parent_run_id"]
