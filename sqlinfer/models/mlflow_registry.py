"""MLflow models on the driver: a declared URI resolved to one model version, its files downloaded
and its PyTorch weights read (flavor ``mlflow``, and ``weights: models:/...`` of the python flavor).

The forms: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH``, any other
artifact URI MLflow reads, or a model folder in the project. An alias is resolved to its version
first and that version's files are read, so the origin recorded (``models:/digits/2``) is exactly
what was scored. The origin is part of the weights' digest, hence of the model's fingerprint:
moving an alias rebuilds the incremental tables that use the model, and only those.

The tracking and registry URIs come from the project file's ``mlflow:`` section (see
:func:`using`), else from MLflow's own environment variables (``MLFLOW_TRACKING_URI``,
``MLFLOW_REGISTRY_URI``).

Loading some models runs code they carry: ``mlflow.pytorch``'s pickle format unpickles the
module, and a pyfunc's loader runs whatever it was logged with. Those are read only when the
declaration says ``trust_code: true``. The ``pt2`` format (``torch.export``, MLflow's default for
PyTorch) is data: with pickles refused, MLflow checks the archive holds none before it loads it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sqlinfer.models.declaration import Located
from sqlinfer.models.flavors.base import REGISTRY_SCHEMES, Weights, state_tensors
from sqlinfer.paths import inside

if TYPE_CHECKING:
    import torch

EXTRA = "pip install 'sqlinfer[mlflow]'"
# MLflow's own switch for reading pickles; set around each load from the declaration's trust_code.
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


@dataclass(frozen=True)
class Settings:
    """Where the registry is; None: MLflow's environment variables, then its defaults."""

    tracking_uri: str | None = None
    registry_uri: str | None = None

    @property
    def registry(self) -> str | None:
        """The registry's URI: MLflow's own rule, the tracking store unless another is named."""
        return self.registry_uri or self.tracking_uri


_settings: ContextVar[Settings | None] = ContextVar("sqlinfer_mlflow_settings", default=None)


def _current() -> Settings:
    return _settings.get() or Settings()


@contextmanager
def using(settings: Settings) -> Iterator[None]:
    """Resolve the models of this block against ``settings`` (the project file's ``mlflow:``)."""
    token = _settings.set(settings)
    try:
        yield
    finally:
        _settings.reset(token)


def absolute_uri(uri: str, root: Path) -> str:
    """A tracking URI with paths taken from the project folder: ``sqlite:///mlflow.db`` and
    ``mlruns`` mean files of the project wherever the command runs."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return (root / uri).resolve().as_uri()
    return uri


def _mlflow(item: Located) -> Any:
    try:
        import mlflow
    except ImportError:
        raise item.error(f"models from MLflow need the mlflow package: {EXTRA}", code="config.missing_extra",
                         key="flavor") from None
    return mlflow


@dataclass(frozen=True)
class ModelFiles:
    """One MLflow model downloaded: its folder, its ``MLmodel`` description and where it came from
    (``models:/digits/2``; empty for a folder of the project, whose bytes are all there is)."""

    folder: Path
    mlmodel: dict[str, Any]
    origin: str

    @property
    def flavors(self) -> dict[str, Any]:
        flavors: dict[str, Any] = self.mlmodel.get("flavors") or {}
        return flavors


def _key(item: Located) -> str:
    """The declaration's key that names the MLflow model: errors point at its line."""
    return "uri" if item.decl.uri is not None else "weights"


def _declared(item: Located) -> str | None:
    return item.decl.uri or item.decl.weights


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resolved(item: Located, uri: str) -> tuple[str, str]:
    """(the URI to download, the origin to record): an alias or a version checked in the registry."""
    mlflow = _mlflow(item)
    settings = _current()
    if not uri.startswith("models:/"):
        return uri, uri if uri.startswith("runs:/") else ""
    name, alias_sep, rest = uri.removeprefix("models:/").partition("@")
    if not alias_sep:
        name, _, rest = name.partition("/")
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry)
    try:
        version = (client.get_model_version_by_alias(name, rest) if alias_sep
                   else client.get_model_version(name, rest))
    except Exception as exc:  # MlflowException for an unknown name/version/alias, or an unreachable server
        where = settings.registry or mlflow.get_registry_uri()
        raise item.error(f"cannot find {uri} in the MLflow registry at {where}: {_first_line(exc)}",
                         code="config.missing_model", key=_key(item)) from None
    concrete = f"models:/{name}/{version.version}"
    return concrete, concrete


@contextmanager
def fetched(item: Located, uri: str, root: Path) -> Iterator[ModelFiles]:
    """The model's files in a folder that exists for the block (a temporary download, or the
    project's own folder for a local path)."""
    if "://" not in uri and not uri.startswith(REGISTRY_SCHEMES):
        folder = inside(root, uri, what=f"model {item.decl.name!r}: model folder", path=item.path,
                        line=item.raw.line_of(_key(item)), allow_outside=item.decl.allow_outside_project)
        if not folder.is_dir():
            raise item.error(f"model folder not found: {folder}", code="config.missing_model", key=_key(item))
        yield ModelFiles(folder, _mlmodel(item, folder), "")
        return
    settings = _current()
    # Progress bars and INFO lines (database migrations) are MLflow's business, not the command's output.
    variables = {"MLFLOW_TRACKING_URI": settings.tracking_uri, "MLFLOW_REGISTRY_URI": settings.registry,
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    with environment(variables), _quiet(), tempfile.TemporaryDirectory(prefix="sqlinfer-mlflow-") as temporary:
        download, origin = _resolved(item, uri)
        try:
            local = _mlflow(item).artifacts.download_artifacts(artifact_uri=download, dst_path=temporary)
        except Exception as exc:  # a missing run or artifact path, an unreachable store
            raise item.error(f"cannot download {download}: {_first_line(exc)}", code="config.missing_model",
                             key=_key(item)) from None
        yield ModelFiles(Path(local), _mlmodel(item, Path(local)), origin)


@contextmanager
def _quiet() -> Iterator[None]:
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _mlmodel(item: Located, folder: Path) -> dict[str, Any]:
    path = folder / "MLmodel"
    if not path.is_file():
        raise item.error(f"{_declared(item)} is not an MLflow model (no MLmodel file in it)",
                         code="config.bad_weights", key=_key(item))
    described = yaml.safe_load(path.read_text(encoding="utf-8"))
    return described if isinstance(described, dict) else {}


@contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """MLflow's environment variables set for one block (None: left as they are), then restored.
    MLflow reads them at each call, where some of its functions ignore URIs passed to them."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pickles_allowed(allowed: bool) -> Any:
    """MLflow's pickle switch for one load."""
    return environment({PICKLE_SWITCH: "true" if allowed else "false"})


def pytorch_module(item: Located, files: ModelFiles) -> torch.nn.Module:
    """The module ``mlflow.pytorch`` logged, loaded on the driver's CPU: pickles only with
    ``trust_code: true`` (a pt2 archive is checked to hold none)."""
    mlflow = _mlflow(item)
    pickled = (files.folder / files.flavors["pytorch"].get("model_data", "data") / "model.pth").is_file()
    if pickled and not item.decl.trust_code:
        raise item.error(f"{_declared(item)} was logged by mlflow.pytorch in pickle format, and "
                         "reading it runs code from the registry: log it with serialization_format='pt2' "
                         "(MLflow's default), or declare `trust_code: true` if you trust whoever logs to it",
                         code="config.unsafe_model", key=_key(item))
    try:
        with pickles_allowed(item.decl.trust_code):
            module: torch.nn.Module = mlflow.pytorch.load_model(str(files.folder), map_location="cpu")
    except Exception as exc:  # a class the pickle names that is not importable, a damaged archive
        raise item.error(f"cannot load the PyTorch model of {_declared(item)}: "
                         f"{_first_line(exc)}", code="config.bad_weights",
                         key=_key(item)) from None
    return module


def module_weights(module: torch.nn.Module, files: ModelFiles) -> Weights:
    """A loaded module's state_dict as the safetensors blob a declared ``class`` loads: the workers
    need neither MLflow nor the logged module's code."""
    from safetensors.torch import save

    return Weights("safetensors", save(state_tensors(module.state_dict())), files.origin)


def state_dict_weights(item: Located, uri: str, root: Path) -> Weights:
    """The weights of the ``mlflow.pytorch`` model at ``uri`` (``weights: models:/...``)."""
    with fetched(item, uri, root) as files:
        if "pytorch" not in files.flavors:
            raise item.error(f"{uri} was not logged with mlflow.pytorch (its flavors: "
                             f"{', '.join(files.flavors) or 'none'}): only its weights could be used",
                             code="config.bad_weights", key=_key(item))
        return module_weights(pytorch_module(item, files), files)
