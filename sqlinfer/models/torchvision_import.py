"""Importing torchvision without torch._dynamo: a tenth of the CPU, the same networks.

``import torchvision`` imports ``torchvision.ops``, whose ``roi_align`` module imports one function
of ``torch._dynamo.utils`` at import time, and with it all of torch's compiler: 1.05 of the 1.17 s of
CPU the import takes (torch 2.14, torchvision 0.29, ``python -X importtime``). Every sqlinfer command
whose models are torchvision networks paid it in the worker daemon (which imports torchvision before
it forks the workers) and in the driver when it resolves a changed model, on machines where those
seconds come out of the cores the model needs. No classification network calls that function; only
detection ops do, and only when they run.

:func:`import_torchvision` imports torchvision with a stand-in for that one module whose function
imports the real one on its first call, then takes the stand-in out of ``sys.modules``, so any later
import of ``torch._dynamo`` is the real one. If torchvision wants anything else from the module
(another release), the stand-in is dropped and torchvision is imported as usual.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

# The module torchvision imports at import time but needs only when a detection op runs, and the
# names it takes from it.
DEFERRED_MODULE = "torch._dynamo.utils"
DEFERRED_NAMES: tuple[str, ...] = ("is_compile_supported",)


def _deferred(name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(DEFERRED_MODULE), name)(*args, **kwargs)

    call.__name__ = name
    return call


def import_torchvision() -> types.ModuleType:
    """``import torchvision``, with :data:`DEFERRED_MODULE` imported only when first used."""
    if "torchvision" in sys.modules or DEFERRED_MODULE in sys.modules:
        return importlib.import_module("torchvision")
    import torch  # noqa: F401  # the real torch first: only the stand-in below is not real

    stand_in = types.ModuleType(DEFERRED_MODULE)
    for name in DEFERRED_NAMES:
        setattr(stand_in, name, _deferred(name))
    before = set(sys.modules)
    sys.modules[DEFERRED_MODULE] = stand_in
    try:
        return importlib.import_module("torchvision")
    except ImportError:
        # torchvision took a name the stand-in lacks: forget its half-imported modules, import as usual.
        for module in set(sys.modules) - before:
            if module.split(".")[0] == "torchvision":
                del sys.modules[module]
        sys.modules.pop(DEFERRED_MODULE, None)
        return importlib.import_module("torchvision")
    finally:
        if sys.modules.get(DEFERRED_MODULE) is stand_in:
            del sys.modules[DEFERRED_MODULE]
