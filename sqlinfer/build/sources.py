"""A project's sources as temporary views: files read with a Spark data source, or a table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sqlinfer.build.config import Source
from sqlinfer.errors import BuildError
from sqlinfer.paths import inside
from sqlinfer.runtime.settings import conf_text
from sqlinfer.runtime.spark_errors import first_line
from sqlinfer.yamlfile import LineDict

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, DataFrameReader, SparkSession


def register_sources(spark: SparkSession, sources: Mapping[str, Source], root: Path, project_file: Path,
                     raw: LineDict) -> list[str]:
    """Each source as a temporary view under its name; ``raw`` is the project file as read (for
    the line of each source in errors). Returns a warning for each file source that matches no
    file (for one declared ``required: true``, that is an error)."""
    from pyspark.errors import AnalysisException, ParseException
    from pyspark.sql import functions as F

    lines = raw.get("sources")
    warnings: list[str] = []
    for name, source in sources.items():
        line = lines.line_of(name) if isinstance(lines, LineDict) else None
        try:
            if source.table is not None:
                frame = spark.table(source.table)
            else:
                assert source.path is not None
                frame = _reader(spark, source).load(_source_path(root, source.path, project_file, line))
            for column, expression in source.columns.items():
                frame = frame.withColumn(column, F.expr(expression))
        except (AnalysisException, ParseException) as exc:
            raise BuildError(f"source {name!r} cannot be read: {first_line(str(exc))}",
                             code="source.unreadable", path=project_file, line=line) from None
        frame.createOrReplaceTempView(name)
        if source.path is not None and _matches_nothing(frame):
            where = f"{project_file}:{line}" if line else str(project_file)
            what = f"source {name!r} matches no file ({source.path}{', ' + source.glob if source.glob else ''})"
            if source.required:
                raise BuildError(f"{what}, and it is declared `required: true`", code="source.empty",
                                 path=project_file, line=line)
            warnings.append(f"{where}: {what}: the nodes that read it get no rows")
    return warnings


def _matches_nothing(frame: DataFrame) -> bool:
    """Whether a file source found no file: its file index is listed when the DataFrame is made,
    so this runs no Spark job. Counted in the JVM: ``frame.inputFiles()`` would bring every path
    to Python one py4j call at a time (0.3 s for the 1,797 digits files)."""
    try:
        return len(frame._jdf.inputFiles()) == 0
    except Exception:  # a source kind without a file listing: nothing to say
        return False


def _reader(spark: SparkSession, source: Source) -> DataFrameReader:
    assert source.format is not None
    reader = spark.read.format(source.format)
    if source.glob:
        reader = reader.option("pathGlobFilter", source.glob)
    if source.recursive:
        reader = reader.option("recursiveFileLookup", "true")
    for key, value in source.options.items():
        reader = reader.option(key, conf_text(value))
    return reader


def _source_path(root: Path, path: str, project_file: Path, line: int | None) -> str:
    """Relative paths are relative to the project; URIs (s3a://, hdfs://) and absolute paths pass."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(inside(root, path, what="source path", path=project_file, line=line))
