"""A network constructed without the random initialization its weights replace right after.

A torchvision constructor fills every parameter with random values (``torch.nn.init``'s kaiming,
truncated-normal and uniform draws) that the state_dict loaded next overwrites: for a ViT-L/16
1.6 s of the 2.3 s a build takes on one core (docs/performance.md), paid by every worker that
builds it and by the driver's check. Constructed with those functions as no-ops, the tensors keep
the memory they were allocated with until ``load_state_dict(strict=True)`` replaces every
parameter and persistent buffer; a strict load fails on any the weights lack, so none keeps that
memory unnoticed.

Only values no state_dict carries could: non-persistent buffers. A module that has any is built
again with its initialization (none of torchvision's classification models has one).

The draws are skipped at ``torch.nn.init``'s functions (also where torch's own modules imported
them by name), not at the tensor methods they call: torch's ``trunc_normal_`` draws until every
value lies in its range, which on skipped draws over arbitrary memory would never end.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The in-place initializers of torch.nn.init (constant_ and its kin are cheap, but skipped alike).
INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                  "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                  "sparse_")
# Where constructors find them: torch.nn.init itself, and the torch modules that import some by
# name (MultiheadAttention's, the Transformer's: a ViT's attention layers).
HOLDERS = ("torch.nn.init", "torch.nn.modules.activation", "torch.nn.modules.transformer")

# The functions are module globals: two threads swapping them at once could leave the no-ops in
# place for good, hence the lock. While they are swapped, a module another thread constructs
# skips its initialization too: sqlinfer constructs one network at a time in a process (the
# workers' build lock in model_cache, the daemon's builds before it forks, the driver's check).
_SWAP_LOCK = threading.Lock()


def _unchanged(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


@contextmanager
def _initializers_skipped() -> Iterator[None]:
    with _SWAP_LOCK:
        init = importlib.import_module("torch.nn.init")
        originals = {name: getattr(init, name) for name in INIT_FUNCTIONS if hasattr(init, name)}
        swapped = [(holder, name, function) for holder in map(importlib.import_module, HOLDERS)
                   for name, function in originals.items() if getattr(holder, name, None) is function]
        try:
            for holder, name, _ in swapped:
                setattr(holder, name, _unchanged)
            yield
        finally:
            for holder, name, function in swapped:
                setattr(holder, name, function)


def constructed_for_weights(construct: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``construct()``'s module without its random initialization, for a caller that loads a
    complete state_dict into it next (strictly). A module with non-persistent buffers, whose
    values no state_dict replaces, is constructed again as usual."""
    with _initializers_skipped():
        module = construct()
    if _has_non_persistent_buffers(module):
        return construct()
    return module


def _has_non_persistent_buffers(module: torch.nn.Module) -> bool:
    saved = set(module.state_dict(keep_vars=True))
    return any(name not in saved for name, _ in module.named_buffers())
