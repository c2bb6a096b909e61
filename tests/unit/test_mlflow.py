"""Models from a real MLflow registry (a sqlite store in a temp folder), without Spark: each
version and alias gives the predictions of its own weights, moving an alias changes the
fingerprint of the models that follow it and of no other, code-carrying models (pickles, pyfuncs)
load only when trusted, and errors name the declaration's line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import REPO, docs_example, env_without_modules, log_digits_to_mlflow

from sqlinfer import Project
from sqlinfer.errors import ConfigError
from sqlinfer.models.network import Network

mlflow = pytest.importorskip("mlflow")  # the `mlflow` extra; the test extra installs it, so CI runs these

PREPROCESS = "    preprocess: {color_mode: L, resize: [8, 8], mean: [0.5], std: [0.5]}\n"


class Registry:
    """A project copy with a registry: `digits` version 1 (the trained weights, alias champion),
    version 2 (random weights), version 3 (the trained weights, logged as a pickle)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'registry' / 'mlflow.db'}"
        (root / "registry").mkdir()
        _, self.trained = log_digits_to_mlflow(root, self.uri, alias="champion")
        _, self.random = log_digits_to_mlflow(root, self.uri, seed=3, alias=None)
        with self.run():
            mlflow.pytorch.log_model(self.trained, name="model", registered_model_name="digits",
                                     serialization_format="pickle")
        # The example's project file names this registry already (its `mlflow:` section).
        assert "tracking_uri: sqlite:///registry/mlflow.db" in (root / "sqlinfer_project.yml").read_text()

    @contextmanager
    def run(self) -> Iterator[None]:
        """A run of the `digits` experiment, whose artifacts are stored next to the registry."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow's notices (pickle format, pip requirements)
            experiment = mlflow.MlflowClient(self.uri).get_experiment_by_name("digits")
            with mlflow.start_run(experiment_id=experiment.experiment_id):
                yield

    def declare(self, models: str) -> Project:
        (self.root / "models.yml").write_text("models:\n" + models)
        return Project.load(self.root)

    def line_of(self, text: str) -> int:
        return (self.root / "models.yml").read_text().splitlines().index(text) + 1


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("mlflow") / "digits"
    shutil.copytree(REPO / "projects" / "digits", root, ignore=shutil.ignore_patterns("target", "data", "registry"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'registry' / 'mlflow.db'}")  # where start_run logs
        yield Registry(root)


def _model(name: str, flavor: str = "mlflow", **keys: str) -> str:
    """One digits declaration in models.yml's block style, logits out."""
    lines = "".join(f"    {key}: {value}\n" for key, value in {"flavor": flavor, **keys, "output": "logits"}.items())
    return f"  - name: {name}\n{lines}{PREPROCESS}"


def _pixels(count: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 1, 8, 8)).astype(np.uint8)


def _own_outputs(network: Any, pixels: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return network(torch.from_numpy((pixels / 255.0 - 0.5) / 0.5).float()).numpy()


def _outputs(model: Any, pixels: np.ndarray) -> np.ndarray:
    return Network(model.plan, model.weights, "cpu").forward(pixels)


def test_each_version_and_alias_gives_the_predictions_of_its_own_weights(registry: Registry) -> None:
    project = registry.declare(
        _model("v1", flavor="python", **{"class": "digits_net:DigitsCNN"}, weights="models:/digits/1")
        + _model("v2", uri="models:/digits/2", **{"class": "digits_net:DigitsCNN"})
        + _model("champion", uri="models:/digits@champion"))
    v1, v2, champion = project.resolve_models()
    assert [(m.weights.format, m.weights.origin) for m in (v1, v2, champion)] == [
        ("safetensors", "models:/digits/1"), ("safetensors", "models:/digits/2"), ("pt2", "models:/digits/1")]
    pixels = _pixels()
    trained, random = _own_outputs(registry.trained, pixels), _own_outputs(registry.random, pixels)
    np.testing.assert_allclose(_outputs(v1, pixels), trained, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_outputs(v2, pixels), random, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_outputs(champion, pixels), trained, atol=1e-5, rtol=0)
    assert np.abs(trained - random).max() > 0.1  # the two versions do differ


def test_moving_an_alias_changes_the_fingerprint_of_the_models_that_follow_it_only(registry: Registry) -> None:
    client = mlflow.MlflowClient(registry.uri)
    client.set_registered_model_alias("digits", "canary", "1")
    declared = _model("pinned", uri="models:/digits/1") + _model("canary", uri="models:/digits@canary")
    pinned, canary = registry.declare(declared).resolve_models()
    client.set_registered_model_alias("digits", "canary", "2")
    pinned_after, canary_after = registry.declare(declared).resolve_models()
    assert pinned_after.plan.fingerprint == pinned.plan.fingerprint
    assert canary_after.plan.fingerprint != canary.plan.fingerprint
    assert (canary.weights.origin, canary_after.weights.origin) == ("models:/digits/1", "models:/digits/2")
    np.testing.assert_allclose(_outputs(canary_after, _pixels()), _own_outputs(registry.random, _pixels()),
                               atol=1e-5, rtol=0)



def test_a_runs_uri_reads_that_runs_model_and_records_the_run(registry: Registry) -> None:
    client = mlflow.MlflowClient(registry.uri)
    trained_run, random_run = (client.get_model_version("digits", version).run_id for version in ("1", "2"))
    uri = f"runs:/{random_run}/model"
    project = registry.declare(_model("by_run", uri=uri)
                               + _model("weights_by_run", flavor="python", **{"class": "digits_net:DigitsCNN"},
                                        weights=f"runs:/{trained_run}/model"))
    by_run, weights_by_run = project.resolve_models()
    assert [(m.weights.format, m.weights.origin) for m in (by_run, weights_by_run)] == [
        ("pt2", uri), ("safetensors", f"runs:/{trained_run}/model")]
    pixels = _pixels()
    np.testing.assert_allclose(_outputs(by_run, pixels), _own_outputs(registry.random, pixels), atol=1e-5, rtol=0)
    np.testing.assert_allclose(_outputs(weights_by_run, pixels), _own_outputs(registry.trained, pixels),
                               atol=1e-5, rtol=0)

    missing = registry.declare(_model("gone", uri=f"runs:/{random_run}/no_such_folder"))
    with pytest.raises(ConfigError, match=rf"cannot download runs:/{random_run}/no_such_folder: ") as info:
        missing.resolve_models()
    assert (info.value.code, info.value.line) == (
        "config.missing_model", registry.line_of(f"    uri: runs:/{random_run}/no_such_folder"))

def test_a_pickled_pytorch_model_is_read_only_when_trusted(registry: Registry) -> None:
    declared = ("  - name: pickled\n    flavor: mlflow\n    uri: models:/digits/3\n    class: digits_net:DigitsCNN\n"
                "    output: logits\n" + PREPROCESS)
    with pytest.raises(ConfigError, match=r"models:/digits/3 was logged by mlflow.pytorch in pickle format, and "
                                          r"reading it runs code from the registry") as info:
        registry.declare(declared).resolve_models()
    assert (info.value.code, info.value.line) == ("config.unsafe_model", registry.line_of("    uri: models:/digits/3"))
    (model,) = registry.declare(declared + "    trust_code: true\n").resolve_models()
    assert (model.weights.format, model.weights.origin) == ("safetensors", "models:/digits/3")
    np.testing.assert_allclose(_outputs(model, _pixels()), _own_outputs(registry.trained, _pixels()),
                               atol=1e-5, rtol=0)


def test_an_unknown_alias_is_an_error_at_the_uri_line(registry: Registry) -> None:
    project = registry.declare("  - name: gone\n    flavor: mlflow\n    uri: models:/digits@nowhere\n" + PREPROCESS)
    with pytest.raises(ConfigError, match=r"cannot find models:/digits@nowhere in the MLflow registry at "
                                          r"sqlite:///.*registry/mlflow.db: .*nowhere") as info:
        project.resolve_models()
    assert info.value.code == "config.missing_model"
    assert (info.value.path, info.value.line) == (str(registry.root / "models.yml"),
                                                  registry.line_of("    uri: models:/digits@nowhere"))


def _log_sklearn(registry: Registry) -> tuple[Any, np.ndarray]:
    """A scikit-learn classifier on 8x8 digit-like rows, logged as a pyfunc that predicts probabilities."""
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    rows = rng.random((200, 64)).astype(np.float32)
    classifier = LogisticRegression(max_iter=200).fit(rows, rng.integers(0, 3, 200))
    with registry.run():
        mlflow.sklearn.log_model(classifier, name="model", registered_model_name="rows",
                                 signature=infer_signature(rows, classifier.predict_proba(rows)),
                                 pyfunc_predict_fn="predict_proba")
    return classifier, rows[:16]


def test_a_pyfunc_model_predicts_through_its_own_predict_only_when_trusted(registry: Registry) -> None:
    classifier, rows = _log_sklearn(registry)
    declared = ("  - name: rows\n    flavor: mlflow\n    uri: models:/rows/1\n    input: tensor\n    shape: [64]\n"
                "    output: probabilities\n")
    with pytest.raises(ConfigError, match=r"models:/rows/1 is a pyfunc model \(loader mlflow.sklearn\), and "
                                          r"loading it runs code it carries") as info:
        registry.declare(declared).resolve_models()
    assert (info.value.code, info.value.line) == ("config.unsafe_model", registry.line_of("    uri: models:/rows/1"))
    (model,) = registry.declare(declared + "    trust_code: true\n").resolve_models()
    assert (model.weights.format, model.plan.num_outputs) == ("mlflow", 3)
    np.testing.assert_allclose(_outputs(model, rows), classifier.predict_proba(rows), atol=1e-6, rtol=0)

    # The logged signature takes 64 columns... as a tensor of shape [64]: [8, 8] contradicts it.
    with pytest.raises(ConfigError, match=r"the model's signature takes rows of shape \[64\]; `shape` gives "
                                          r"\[8, 8\]") as info:
        registry.declare(declared.replace("[64]", "[8, 8]") + "    trust_code: true\n").resolve_models()
    assert (info.value.code, info.value.line) == ("config.bad_input_shape", registry.line_of("    shape: [8, 8]"))


def test_models_shows_the_uri_the_version_it_resolved_to_and_the_fingerprint(registry: Registry) -> None:
    from sqlinfer.cli import main

    # docs/models.md's declaration, as written.
    project = registry.declare(docs_example("docs/models.md", "name: digits_champion").removeprefix("models:\n"))
    (model,) = project.resolve_models()
    result = CliRunner().invoke(main, ["models", str(registry.root)], prog_name="sqlinfer")
    assert result.exit_code == 0, result.output
    cells = [c.strip() for c in result.stdout.splitlines()[2].split("|")]
    assert cells[:3] == ["digits_champion_predict", "mlflow",
                         "models:/digits@champion = models:/digits/1 (exported graph)"]
    assert cells[4] == "struct<label:string,index:int,score:float>"
    assert cells[-1] == model.plan.fingerprint[:12]


def test_without_mlflow_the_error_names_the_extra(registry: Registry, tmp_path: Path) -> None:
    registry.declare("  - name: champion\n    flavor: mlflow\n    uri: models:/digits@champion\n" + PREPROCESS)
    probe = subprocess.run([sys.executable, "-m", "sqlinfer", "models", str(registry.root)], capture_output=True,
                           text=True, env=env_without_modules(tmp_path / "site", ("mlflow",)))
    assert probe.returncode == 1
    assert probe.stderr.strip() == (
        f"error: {registry.root / 'models.yml'}:{registry.line_of('    flavor: mlflow')}: model 'champion': models "
        "from MLflow need the mlflow package: pip install 'sqlinfer[mlflow]' [config.missing_extra]")
