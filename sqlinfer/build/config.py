"""`sqlinfer_project.yml`: the project file, validated into a frozen :class:`ProjectConfig`.

Errors name the file and line of the offending key. Nothing here imports Spark or torch.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from sqlinfer.errors import ConfigError, closest
from sqlinfer.yamlfile import IDENTIFIER, LineDict, Strict, load_yaml, validation_error

PROJECT_FILE = "sqlinfer_project.yml"
SourceFormat = Literal["binaryFile", "parquet", "csv", "json", "orc", "text"]
SOURCE_FORMATS: tuple[str, ...] = typing.get_args(SourceFormat)

# What `serve: {allow: [...]}` can give back to the clients of `sqlinfer serve` (and to `sqlinfer sql
# --safe`): the SQL guard (sqlinfer/serve/guard.py) refuses each by default. docs/serve.md says why.
ALLOW = "allow"
GUARD_FEATURES: dict[str, str] = {
    "transform": "SELECT TRANSFORM(...) USING 'command' (runs a shell command)",
    "reflect": "reflect(), java_method(), try_reflect() (call Java methods)",
    "add_jar": "ADD JAR",
    "add_file": "ADD FILE",
    "add_archive": "ADD ARCHIVE",
    "create_function": "CREATE [TEMPORARY] FUNCTION ... AS 'java.Class' [USING JAR ...]",
    "set": "SET key=value and RESET, and settings sent with a connection",
    "external_paths": "INSERT OVERWRITE DIRECTORY, LOAD DATA, LOCATION outside the warehouse",
    "jdbc": "CREATE TABLE / TEMPORARY VIEW ... USING jdbc",
}


def _guard_feature(name: str) -> str:
    if name not in GUARD_FEATURES:
        raise ValueError(f"{name!r} is not a feature the SQL guard can allow{closest(name, GUARD_FEATURES)}; "
                         f"use any of {', '.join(GUARD_FEATURES)}")
    return name


# A `serve:` value: a Thrift server setting (hive.server2.*: value), or the `allow:` list. Told apart
# before validating, so a wrong name in the list is reported as such (not as "not a string").
ServeValue = Annotated[
    Annotated[str | int | float | bool, Tag("setting")]
    | Annotated[list[Annotated[str, AfterValidator(_guard_feature)]], Tag(ALLOW)],
    Discriminator(lambda value: ALLOW if isinstance(value, list) else "setting"),
]


class Source(Strict):
    """An input: files read with a Spark data source (``path`` + ``format``), or an existing ``table``."""

    format: SourceFormat | None = None
    path: str | None = None
    glob: str | None = Field(None, description="pathGlobFilter, e.g. '*.jpg'")
    recursive: bool = False
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    table: str | None = None
    columns: dict[str, str] = Field(default_factory=dict, description="extra columns: name -> SQL expression")
    # A file source that matches no file is a warning; with `required: true`, an error.
    required: bool = False
    files_per_task: int | None = Field(None, gt=0, description="binaryFile: files per Spark task "
                                       "(default: 4 equal tasks per core, at most 1,024 files each)")
    description: str | None = None  # shown by `sqlinfer docs`

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if (self.path is None) == (self.table is None):
            raise ValueError("a source needs either `path` (with `format`) or `table`")
        if self.path is not None and self.format is None:
            raise ValueError(f"source with `path` needs `format` (one of {', '.join(SOURCE_FORMATS)})")
        if self.table is not None and (self.format or self.glob or self.recursive or self.options):
            raise ValueError("a `table` source takes no format, glob, recursive or options")
        if self.files_per_task is not None and self.format != "binaryFile":
            raise ValueError("`files_per_task` is for binaryFile sources (one row per file)")
        return self


class MlflowConfig(Strict):
    """Where the MLflow models of flavor mlflow (and ``weights: models:/...``) are looked up; what is
    not given comes from MLflow's environment variables. Relative paths are the project's files."""

    tracking_uri: str | None = Field(None, description="e.g. sqlite:///mlflow.db or http://mlflow:5000")
    registry_uri: str | None = None


class ProjectConfig(Strict):
    """The whole project file."""

    name: str
    models: tuple[str, ...] = ("models.yml",)
    sql: str = "sql"
    macros: str = "macros"
    seeds: str = "seeds"
    tests: str = "tests"  # singular data tests: SQL files that select failing rows
    target: str = "target"
    database: str = "default"
    sources: dict[str, Source] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    spark: dict[str, str | int | float | bool] = Field(default_factory=dict)
    serve: dict[str, ServeValue] = Field(default_factory=dict)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    @field_validator("models", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("name", "database")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError(f"{value!r} must be an identifier (letters, digits, _)")
        return value

    @field_validator("serve")
    @classmethod
    def _serve_allow(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if (key == ALLOW) != isinstance(item, list):
                raise ValueError(f"`{ALLOW}` takes a list of SQL features, e.g. `allow: [reflect, add_jar]`"
                                 if key == ALLOW else f"{key!r} takes one value, not a list")
        return value

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, Source]) -> dict[str, Source]:
        for name in value:
            if not IDENTIFIER.match(name):
                raise ValueError(f"source name {name!r} must be an identifier (letters, digits, _)")
        return value


def load_project_file(root: Path) -> tuple[ProjectConfig, LineDict]:
    path = root / PROJECT_FILE
    if not path.is_file():
        raise ConfigError(f"no {PROJECT_FILE} in {root} (is this a sqlinfer project? `sqlinfer init NAME` makes one)",
                            code="config.not_a_project", path=path)
    data = load_yaml(path)
    if not isinstance(data, LineDict):
        raise ConfigError("the project file must be a mapping", code="config.invalid_value", path=path, line=1)
    try:
        config = ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, data, path, ProjectConfig) from None
    return config, data
