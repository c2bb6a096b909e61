"""A model's network built on its device: precision, memory layout, folded batch norms, the
embedding hook, and the normalization that turns uint8 pixels into the network's input.

Both sides use it: the driver builds one on the CPU to check a declaration, each worker builds
one per process (:mod:`sqlinfer.worker.model_cache`). No Spark here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from sqlinfer.models.flavors import get as get_flavor
from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.plan import ModelPlan


class Network:
    """A built network on its device, with the input normalization and output head of its plan."""

    def __init__(self, plan: ModelPlan, weights: Weights, device: str) -> None:
        import torch

        self.plan = plan
        self.device = torch.device(device)
        decl = plan.decl
        module = get_flavor(decl.flavor).build(decl, weights).eval()
        self.dtype = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                      "bf16": torch.bfloat16}[decl.precision]
        if self.device.type == "cpu" and self.dtype == torch.float16:
            self.dtype = torch.float32  # fp16 kernels are slow or missing on CPU; keep exact results
        # cuDNN and cuBLAS run fp32 work as TF32 by default (differences ~1e-3 against the CPU):
        # `fp32` means true fp32; TF32 is the explicit `tf32` precision.
        self.tf32 = decl.precision == "tf32"
        if decl.embedding_layer is None:
            # Hooks on a declared embedding layer need the network's modules as declared.
            module = fold_batch_norms(module)
        self.memory_format = torch.contiguous_format
        if decl.input == "image" and len(plan.input_shape) == 3 and _has_conv2d(module):
            # oneDNN (CPU) and cuDNN (GPU, fp16/bf16) run 2-d convolutions faster on NHWC data:
            # about 1.2x for resnet18 on CPU (bench/). Results differ only by float rounding.
            self.memory_format = torch.channels_last
        self.module = module.to(self.device, dtype=self.dtype)
        if self.memory_format is torch.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
        self._features: list[Any] = []
        if decl.output == "embedding" and _hookable(self.module):
            # Hooks need an eager module; a TorchScript module's (or ONNX graph's) output is its embedding.
            self._hook_embedding(decl.embedding_layer)
        pp = plan.preprocess
        self.mean = self.std = None
        if pp is not None and pp.mean is not None:
            self.mean = torch.tensor(pp.mean, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        if pp is not None and pp.std is not None:
            self.std = torch.tensor(pp.std, dtype=torch.float32, device=self.device).view(-1, 1, 1)

    def _hook_embedding(self, layer: str | None) -> None:
        import torch

        modules = dict(self.module.named_modules())
        # The hooks hold the list, not self: a network that held itself through its module would
        # outlive its last use (sqlinfer/worker/model_cache.py freezes it out of the collector's reach).
        features = self._features
        if layer is not None:
            if layer not in modules:
                raise ValueError(f"embedding_layer {layer!r} is not a module of the network")
            modules[layer].register_forward_hook(lambda _m, _i, out: features.append(out))
            return
        # Default: the penultimate features, i.e. the input of the last Linear layer.
        linears = [m for m in modules.values() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError("no Linear layer to take the penultimate features from; set embedding_layer")
        linears[-1].register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0]))

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """Rows of preprocessed input in the plan's ``input_shape`` (images: C x H x W, uint8 or
        float pixel values 0-255; tensors: float32) -> float32 output rows."""
        import torch

        return self.launch(torch.from_numpy(pixels)).result()

    def forward_hwc(self, pixels: np.ndarray) -> np.ndarray:
        """Images as N x H x W x C uint8 (the worker's batch buffers) -> float32 output rows."""
        import torch

        # A permuted view: N, C, H, W in shape, channels-last in memory; no copy.
        return self.launch(torch.from_numpy(pixels).permute(0, 3, 1, 2)).result()

    def launch(self, x: Any) -> Outputs:
        """Start the forward pass of a batch (a tensor shaped like :meth:`forward`'s input, on any
        device). On CUDA it only queues the work, and the outputs come back to the host
        asynchronously: the caller converts the previous batch's outputs while this one runs."""
        import torch

        with torch.inference_mode():
            # From pinned memory (GPU) the copy runs asynchronously; the network waits for it.
            x = x.to(self.device, non_blocking=True)
            if self.plan.decl.input == "text":
                x = x.to(torch.long)  # token ids and attention masks, N x 2 x L
            elif self.plan.decl.input == "image":
                # The same operations, in the same order, as ToTensor() + Normalize().
                x = x.to(torch.float32).div_(255)
                if self.mean is not None:
                    x = x.sub_(self.mean)
                if self.std is not None:
                    x = x.div_(self.std)
            if self.plan.decl.input != "text":
                x = x.to(self.dtype, memory_format=self.memory_format)
            self._features.clear()
            with tf32_allowed(self.tf32):
                out = self.module(x)
            if self.plan.decl.output == "embedding" and self._features:
                out = self._features[-1]
            self._features.clear()
            out = out.reshape(out.shape[0], -1).float()
            if self.device.type != "cuda":
                return Outputs(out, None)
            # Into pinned host memory without waiting; the event says when the copy is done.
            host = out.to("cpu", non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return Outputs(host, done)


class Outputs:
    """A batch's outputs on the host, or on their way there (CUDA)."""

    def __init__(self, host: Any, done: Any) -> None:
        self._host = host
        self._done = done

    def result(self) -> np.ndarray:
        """The float32 output rows, once the device has written them."""
        if self._done is not None:
            self._done.synchronize()
        return self._host.numpy()


@contextmanager
def tf32_allowed(allowed: bool) -> Iterator[None]:
    """TF32 for convolutions and matrix products on or off while one forward pass runs: the
    switches are process-wide and another model of the same worker may want the other setting."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def fold_batch_norms(module: Any) -> Any:
    """The network with each eval-mode BatchNorm folded into the convolution before it (torch.fx):
    one pass over the activations less per layer, the same outputs up to float rounding. Networks
    without BatchNorm, or that torch.fx cannot trace, are returned as they are."""
    import torch

    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return module
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(module, inplace=True)
    except Exception:  # not traceable (data-dependent control flow, ...): keep it as it is
        return module


def _hookable(module: Any) -> bool:
    """Whether the network's layers are eager modules a forward hook can be put on."""
    import torch

    return not isinstance(module, torch.jit.ScriptModule) and getattr(module, "hookable", True)


def _has_conv2d(module: Any) -> bool:
    import torch

    try:
        return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    except Exception:  # e.g. a TorchScript module: keep its default layout
        return False
