"""Flavor `mlflow`: a model logged to MLflow, declared by ``uri:`` (``models:/NAME/VERSION``,
``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH`` or a model folder) and read once on the driver by
:mod:`sqlinfer.models.mlflow_registry` (the optional extra ``pip install 'sqlinfer[mlflow]'``).

What runs on the workers follows from what was logged and declared:

- ``mlflow.pytorch`` with ``class:`` declared: the logged weights loaded into that class, as with
  flavor python. sqlinfer's whole path applies (folded batch norms, channels_last, precision,
  embedding hooks) and the workers need neither MLflow nor the logged module.
- ``mlflow.pytorch`` in the ``pt2`` format (``torch.export``, MLflow's default) without ``class``:
  the exported graph itself; the workers need torch only. Its layers are not modules, so an
  embedding is the graph's output, as for ONNX.
- any other pyfunc (``trust_code: true`` required: its loader runs code it carries): the model
  folder is broadcast, each worker loads it once with ``mlflow.pyfunc`` and calls ``predict`` on
  each batch, rows shaped as its signature wants them (a tensor, or a DataFrame of its columns).
  Its outputs per row are the model's outputs (a single value is one output).

The signature logged with the model, when there is one, is checked against the declared tensor
``shape`` before anything runs.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import threading
import zipfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.models.declaration import Located, ModelDecl
from sqlinfer.models.flavors.base import Flavor, Weights
from sqlinfer.models.flavors.python import build_class, check_class, project_module_file

if TYPE_CHECKING:
    import torch

# Fixed entry times: the same model folder always zips to the same bytes (and fingerprint).
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class Mlflow(Flavor):
    def validate(self, decl: ModelDecl) -> None:
        if not decl.uri:
            raise ValueError("flavor mlflow needs `uri` (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH "
                             "or a model folder)")
        if decl.weights:
            raise ValueError("flavor mlflow reads its weights from `uri`: leave `weights` out")
        if decl.class_path is not None and ":" not in decl.class_path:
            raise ValueError("`class` must look like module.path:ClassName")
        if decl.input == "text":
            raise ValueError("flavor mlflow takes image or tensor input; text models: flavor transformers")
        if decl.embedding_layer and decl.class_path is None:
            raise ValueError("embedding_layer needs `class` (an MLflow graph's or pyfunc's output is its embedding)")

    def load_weights(self, item: Located, root: Path) -> Weights:
        from sqlinfer.models.mlflow_registry import fetched, module_weights, pytorch_module

        decl = item.decl
        assert decl.uri is not None
        if decl.class_path is not None:
            check_class(item, root)
        with fetched(item, decl.uri, root) as files:
            _check_signature(item, files.mlmodel)
            if "pytorch" in files.flavors:
                module = pytorch_module(item, files)  # pickles refused unless trusted; pt2 checked by MLflow
                if decl.class_path is not None:
                    return module_weights(module, files)
                exported = files.folder / files.flavors["pytorch"].get("model_data", "data") / "model.pt2"
                if not exported.is_file():
                    raise item.error(f"{decl.uri} was logged in pickle format: declare its `class` (importable "
                                     "on the workers) so that only its weights are used", code="config.missing_key",
                                     key="uri")
                return Weights("pt2", exported.read_bytes(), files.origin)
            if decl.class_path is not None:
                raise item.error(f"{decl.uri} was not logged with mlflow.pytorch (its flavors: "
                                 f"{', '.join(files.flavors) or 'none'}): `class` has no weights to load",
                                 code="config.bad_weights", key="class")
            if "python_function" not in files.flavors:
                raise item.error(f"{decl.uri} has no python_function flavor to predict with (its flavors: "
                                 f"{', '.join(files.flavors) or 'none'})", code="config.bad_weights", key="uri")
            if not decl.trust_code:
                loader = files.flavors["python_function"].get("loader_module", "?")
                raise item.error(f"{decl.uri} is a pyfunc model (loader {loader}), and loading it runs code it "
                                 "carries: declare `trust_code: true` if you trust whoever logs to this registry",
                                 code="config.unsafe_model", key="uri")
            return Weights("mlflow", _zipped(files.folder), files.origin)

    def file_weights(self, item: Located, root: Path) -> Weights | None:
        return None  # an alias can move at any time: resolved at every command

    def source_files(self, item: Located, root: Path) -> tuple[Path, ...] | None:
        module_file = project_module_file(item.decl, root) if item.decl.class_path else None
        return (module_file,) if module_file else None

    def describe(self, item: Located, weights: Weights) -> str:
        resolved = f" = {weights.origin}" if weights.origin not in ("", item.decl.uri) else ""
        runs = {"safetensors": item.decl.class_path, "pt2": "exported graph", "mlflow": "pyfunc"}[weights.format]
        return f"{item.decl.uri}{resolved} ({runs})"

    def build(self, decl: ModelDecl, weights: Weights) -> torch.nn.Module:
        if weights.format == "safetensors":
            return build_class(decl, weights)
        if weights.format == "pt2":
            import torch

            return _wrappers()[0](torch.export.load(io.BytesIO(weights.data)).module())
        return _wrappers()[1](_pyfunc(weights))


def _check_signature(item: Located, mlmodel: dict[str, Any]) -> None:
    """A declared tensor shape that the logged signature contradicts is an error at `shape`."""
    decl = item.decl
    if decl.input != "tensor" or decl.shape is None:
        return
    inputs = json.loads((mlmodel.get("signature") or {}).get("inputs") or "[]")
    if not inputs:
        return
    spec = inputs[0].get("tensor-spec") if len(inputs) == 1 else None
    if spec is not None:
        expected, wanted = tuple(spec["shape"][1:]), tuple(decl.shape)
    else:
        expected, wanted = (len(inputs),), (math.prod(decl.shape),)
    if -1 not in expected and expected != wanted:
        what = f"rows of shape {list(expected)}" if spec is not None else f"{len(inputs)} columns"
        raise item.error(f"the model's signature takes {what}; `shape` gives {list(decl.shape)}",
                         code="config.bad_input_shape", key="shape")


def _zipped(folder: Path) -> bytes:
    """The model folder as zip bytes, the same for the same files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            entry = zipfile.ZipInfo(path.relative_to(folder).as_posix(), ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes())
    return buffer.getvalue()


# Per process: each pyfunc unzipped and loaded once (the folders live as long as the process).
_loaded: dict[str, tuple[Any, Any]] = {}
_lock = threading.Lock()


def _pyfunc(weights: Weights) -> Any:
    """The pyfunc in ``weights``, loaded once per process (worker side; needs MLflow there)."""
    with _lock:
        if weights.digest not in _loaded:
            import mlflow

            from sqlinfer.models.mlflow_registry import pickles_allowed

            folder = tempfile.TemporaryDirectory(prefix="sqlinfer-pyfunc-")
            with zipfile.ZipFile(io.BytesIO(weights.data)) as archive:
                archive.extractall(folder.name)
            # The driver refused this model unless its declaration says trust_code: true.
            with pickles_allowed(True):
                _loaded[weights.digest] = (mlflow.pyfunc.load_model(folder.name), folder)
        return _loaded[weights.digest][0]


@cache
def _wrappers() -> tuple[type, type]:
    """The ``nn.Module`` classes around an exported graph and a pyfunc (torch imported lazily)."""
    import numpy as np
    import torch

    class ExportedGraph(torch.nn.Module):
        """A ``torch.export`` graph: exported in eval mode, and its train()/eval() are refused."""

        hookable = False

        def __init__(self, graph: torch.nn.Module) -> None:
            super().__init__()
            self.graph = graph

        def train(self, mode: bool = True) -> ExportedGraph:
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.graph(x)
            return out

    class Pyfunc(torch.nn.Module):
        """A pyfunc's predict on each batch, with rows shaped as its input schema wants them."""

        hookable = False

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model
            self.schema = model.metadata.get_input_schema()

        def train(self, mode: bool = True) -> Pyfunc:
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x.detach().to("cpu", torch.float32).numpy()
            inputs: Any = rows
            if self.schema is not None and self.schema.is_tensor_spec():
                inputs = rows.astype(self.schema.numpy_types()[0], copy=False)
            elif self.schema is not None:
                import pandas as pd

                inputs = pd.DataFrame(rows.reshape(len(rows), -1), columns=self.schema.input_names())
            out = self.model.predict(inputs)
            values = out.to_numpy() if hasattr(out, "to_numpy") else out
            array = np.asarray(values, dtype=np.float32).reshape(len(rows), -1)
            return torch.from_numpy(np.ascontiguousarray(array)).to(x.device)

    return ExportedGraph, Pyfunc


FLAVOR = Mlflow()
