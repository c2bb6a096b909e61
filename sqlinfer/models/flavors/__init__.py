"""The flavors: where a declared model comes from. One module per flavor, each with a ``FLAVOR``
object implementing :class:`~sqlinfer.models.flavors.base.Flavor`; a new flavor is a new module
here and nothing else."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from functools import cache

from sqlinfer.models.flavors.base import Flavor

_NOT_FLAVORS = {"base"}


@cache
def names() -> tuple[str, ...]:
    """Every flavor name: the modules of this package."""
    return tuple(sorted(info.name for info in pkgutil.iter_modules(__path__) if info.name not in _NOT_FLAVORS))


def get(name: str) -> Flavor:
    flavor: Flavor = importlib.import_module(f"{__name__}.{name}").FLAVOR
    return flavor


def worker_modules(flavor_names: Iterable[str]) -> tuple[str, ...]:
    """The modules the workers of models of these flavors import beyond torch, in a stable order."""
    return tuple(sorted({module for name in set(flavor_names) for module in get(name).worker_modules}))
