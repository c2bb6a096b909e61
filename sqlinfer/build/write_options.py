"""File-format options for the tables a build writes, chosen from the rows' columns.

Parquet writes each column with a dictionary first and falls back to plain values once the
dictionary grows past its page limit. Model outputs such as logits, probabilities and embeddings
are wide arrays of floats that almost never repeat: every page fills a hash map of its values,
then throws it away. In the bench's 1,000-image build (1,000 logits a row) that was a fifth of
the JVM's task CPU (bench/run.py; docs/performance.md). Float columns are therefore written
without a dictionary, each named in parquet's per-column setting
(``parquet.enable.dictionary#<column path>``), so labels, paths and other columns keep theirs.

The options go into the table's definition (``CREATE TABLE ... OPTIONS``), so appends to an
incremental table write the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql.types import DataType, StructType

DICTIONARY = "parquet.enable.dictionary"


def table_options(file_format: str, schema: StructType, legacy_parquet: bool = False) -> dict[str, str]:
    """The OPTIONS for a table of ``file_format`` holding rows of ``schema``. Parquet only, in
    Spark's standard layout: with ``spark.sql.parquet.writeLegacyFormat`` the column paths differ
    and no option is given (the files are then written as Spark writes them by default)."""
    if file_format.lower() != "parquet" or legacy_parquet:
        return {}
    return {f"{DICTIONARY}#{path}": "false" for path in float_column_paths(schema)}


def float_column_paths(schema: StructType) -> list[str]:
    """Parquet's paths of the float and double leaf columns of ``schema`` (Spark's standard
    layout: ``col.list.element`` for an array's items, ``col.key_value.key`` / ``.value`` for a
    map's, ``col.field`` for a struct's fields)."""
    paths: list[str] = []
    for field in schema.fields:
        _collect(field.dataType, field.name, paths)
    return paths


def _collect(data_type: DataType, path: str, paths: list[str]) -> None:
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, MapType, StructType

    if isinstance(data_type, (FloatType, DoubleType)):
        paths.append(path)
    elif isinstance(data_type, ArrayType):
        _collect(data_type.elementType, f"{path}.list.element", paths)
    elif isinstance(data_type, MapType):
        _collect(data_type.keyType, f"{path}.key_value.key", paths)
        _collect(data_type.valueType, f"{path}.key_value.value", paths)
    elif isinstance(data_type, StructType):
        for field in data_type.fields:
            _collect(field.dataType, f"{path}.{field.name}", paths)
