"""sqlinfer: deep-learning models as Spark SQL functions, and SQL projects that build prediction tables.

The public Python API is :class:`sqlinfer.Project`; everything heavy (pyspark, torch) is imported
lazily so that importing this package and ``sqlinfer --help`` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlinfer.errors import (
    BuildError,
    ClientError,
    CommandError,
    ConfigError,
    ServeError,
    SessionError,
    SqlinferError,
    TemplateError,
)

__all__ = ["BuildError", "ClientError", "CommandError", "ConfigError", "Project", "ServeError", "SessionError",
           "SqlinferError", "TemplateError", "__version__"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from sqlinfer.project import Project


def __getattr__(name: str) -> Any:
    if name == "Project":
        from sqlinfer.project import Project

        return Project
    raise AttributeError(name)
