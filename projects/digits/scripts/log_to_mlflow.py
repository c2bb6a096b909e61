"""Log the digits CNN to an MLflow registry as a new version of the model `digits` and point the
alias `champion` at it (README: "From an MLflow registry").

    pip install 'sqlinfer[mlflow]'
    python projects/digits/scripts/log_to_mlflow.py     # the project's registry/mlflow.db

The network is logged with `mlflow.pytorch` in MLflow's default `pt2` format (a torch.export
graph: data, not a pickle), with its signature, so sqlinfer reads it without running its code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from digits_net import DigitsCNN  # noqa: E402

DEFAULT_URI = f"sqlite:///{ROOT / 'registry' / 'mlflow.db'}"


def trained() -> torch.nn.Module:
    from safetensors.torch import load_file

    network = DigitsCNN()
    network.load_state_dict(load_file(str(ROOT / "weights" / "digits_cnn.safetensors")))
    return network.eval()


def log(network: torch.nn.Module, tracking_uri: str, alias: str | None = "champion") -> str:
    """Log ``network`` as a new version of `digits` at ``tracking_uri``; returns the version."""
    import mlflow
    from mlflow.models import infer_signature

    example = np.zeros((2, 1, 8, 8), dtype=np.float32)  # two rows: the batch size stays dynamic
    signature = infer_signature(example, network(torch.from_numpy(example)).detach().numpy())
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("digits")
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        # A sqlite store keeps its artifacts next to its database, not in the working directory.
        store = Path(tracking_uri.removeprefix("sqlite:///")).parent if tracking_uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(
            "digits", artifact_location=(store / "artifacts").as_uri() if store else None)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the store mlflow.start_run logs to
    try:
        with mlflow.start_run(experiment_id=experiment_id):
            info: Any = mlflow.pytorch.log_model(network, name="model", registered_model_name="digits",
                                                 signature=signature, input_example=example)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
    version = str(info.registered_model_version)
    if alias is not None:
        client.set_registered_model_alias("digits", alias, version)
    return version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=DEFAULT_URI, help=f"default: {DEFAULT_URI}")
    parser.add_argument("--alias", default="champion")
    args = parser.parse_args()
    (ROOT / "registry").mkdir(exist_ok=True)
    version = log(trained(), args.tracking_uri, args.alias)
    print(f"logged models:/digits/{version} (alias {args.alias}: models:/digits@{args.alias})")


if __name__ == "__main__":
    main()
