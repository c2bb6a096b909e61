"""Flavor `onnx`: a graph exported to ONNX (``torch.onnx.export``, tf2onnx, ...), run by
onnxruntime (the optional extra ``pip install 'sqlinfer[onnx]'``).

The ``.onnx`` file is broadcast as it is on disk and checked on the driver: it must be one
self-contained graph (no tensors in external files: onnxruntime would read them relative to each
worker's working directory) with one float input; its first output is the model's output. An ONNX file is
data (a protobuf graph of operators), not code: onnxruntime runs only its own operators, and a
graph that names an operator it does not know is refused when the session is created.

Workers wrap the session in a small ``torch.nn.Module`` so the rest of the worker path (decode,
normalize, batch, outputs) is the same as for the PyTorch flavors. The session runs on CUDA when
the worker's device is a GPU and onnxruntime has the CUDA execution provider (the
``onnxruntime-gpu`` package), else on the CPU, with as many threads as the task has cores.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.models.declaration import Located, ModelDecl
from sqlinfer.models.flavors.base import Flavor, Weights, weights_path

if TYPE_CHECKING:
    import torch

EXTRA = "pip install 'sqlinfer[onnx]'"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _runtime(item: Located | None = None) -> Any:
    """onnxruntime, or (with ``item``) a config error at the declaration that names the extra."""
    try:
        import onnxruntime
    except ImportError:
        if item is None:
            raise
        raise item.error(f"flavor onnx needs onnxruntime: {EXTRA}", code="config.missing_extra",
                         key="flavor") from None
    return onnxruntime


def external_tensors(data: bytes) -> list[str]:
    """Names of the graph's tensors kept in external files (with subgraphs'). onnxruntime reads such
    a file relative to the loading process's working directory, so a graph could make the workers
    read a file that is no part of it; the driver refuses those graphs (needs the `onnx` package,
    part of the extra; the workers need onnxruntime only)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    def tensors(graph: Any) -> Any:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    yield from tensors(attribute.g)
                for subgraph in attribute.graphs:
                    yield from tensors(subgraph)

    model = onnx.load_model_from_string(data)
    return [tensor.name for tensor in tensors(model.graph) if uses_external_data(tensor)]


def new_session(data: bytes, providers: list[Any], threads: int | None = None) -> Any:
    """An onnxruntime session over the graph in ``data``, quiet (its warnings are not the user's)."""
    runtime = _runtime()
    options = runtime.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        # One task's cores, like torch.set_num_threads in the worker: the other tasks use the rest.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return runtime.InferenceSession(data, sess_options=options, providers=providers)


def signature(session: Any) -> str:
    """``input[N, 1, 8, 8] -> output[N, 10]``: the graph's input and output, as `sqlinfer models` shows them."""
    def shown(arg: Any) -> str:
        dims = ", ".join(str(d) if isinstance(d, int) else "N" for d in arg.shape)
        return f"{arg.name}[{dims}]"

    return f"{' '.join(shown(a) for a in session.get_inputs())} -> {shown(session.get_outputs()[0])}"


class Onnx(Flavor):
    def validate(self, decl: ModelDecl) -> None:
        if not decl.weights:
            raise ValueError("flavor onnx needs `weights` (an .onnx file)")
        if decl.embedding_layer:
            raise ValueError("embedding_layer is not supported for onnx: export the graph with the embedding "
                             "as its first output")
        if decl.precision in ("fp16", "bf16"):
            raise ValueError("an ONNX graph runs at the precision it was exported with: leave `precision` out")

    def load_weights(self, item: Located, root: Path) -> Weights:
        _runtime(item)  # the missing extra before anything about the file
        path = weights_path(item, root)
        weights = Weights.read("onnx", path)
        data = weights.data
        try:
            outside = external_tensors(data)
        except ImportError:
            raise item.error(f"flavor onnx needs the onnx package to check the graph: {EXTRA}",
                             code="config.missing_extra", key="flavor") from None
        except Exception as exc:  # not a protobuf of an ONNX model
            raise item.error(f"cannot load {path.name} as a self-contained ONNX graph: {exc}",
                             code="config.bad_weights", key="weights") from None
        if outside:
            raise item.error(f"{path.name} keeps tensors in external files ({', '.join(outside[:3])}): save the "
                             "graph as one file (onnx.save_model without save_as_external_data)",
                             code="config.bad_weights", key="weights")
        try:
            session = new_session(data, [CPU])
        except Exception as exc:  # an operator onnxruntime does not know, a malformed graph
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise item.error(f"cannot load {path.name} as a self-contained ONNX graph: {first}",
                             code="config.bad_weights", key="weights") from None
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(float)":
            found = ", ".join(f"{a.name} ({a.type})" for a in inputs)
            raise item.error(f"{path.name} must have one float input, not {found}", code="config.bad_weights",
                             key="weights")
        return weights

    def file_weights(self, item: Located, root: Path) -> Weights | None:
        return self.load_weights(item, root)

    def describe(self, item: Located, weights: Weights) -> str:
        return f"{item.decl.weights}: {signature(new_session(weights.data, [CPU]))}"

    def build(self, decl: ModelDecl, weights: Weights) -> torch.nn.Module:
        return _graph_module_class()(weights.data)


@cache
def _graph_module_class() -> type:
    """The ``nn.Module`` around a session, defined on first use (torch is imported lazily)."""
    import numpy as np
    import torch

    class OnnxGraph(torch.nn.Module):
        """Runs the graph on the device of its input: a session per device, made on first use."""

        hookable = False  # no submodules: an embedding is the graph's output, not a hooked layer

        def __init__(self, data: bytes) -> None:
            super().__init__()
            self.data = data
            # Per device: the session, its input's name and its first output's name.
            self.sessions: dict[str, tuple[Any, str, str]] = {}

        def session(self, device: torch.device) -> tuple[Any, str, str]:
            key = str(device)
            if key not in self.sessions:
                providers: list[Any] = [CPU]
                if device.type == "cuda" and CUDA in _runtime().get_available_providers():
                    providers = [(CUDA, {"device_id": device.index or 0}), CPU]
                session = new_session(self.data, providers, torch.get_num_threads())
                self.sessions[key] = (session, session.get_inputs()[0].name, session.get_outputs()[0].name)
            return self.sessions[key]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            session, input_name, output_name = self.session(x.device)
            pixels = x.detach().to("cpu", torch.float32).contiguous().numpy()
            out = session.run([output_name], {input_name: pixels})[0]
            return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)

    return OnnxGraph


FLAVOR = Onnx()
