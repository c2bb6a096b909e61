"""Which columns a build writes without parquet's dictionary: the float leaves of any nesting,
named by parquet's column paths in Spark's standard layout."""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    FloatType,
    IntegerType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from sqlinfer.build.write_options import float_column_paths, table_options

TOP_K = ArrayType(StructType([StructField("label", StringType()), StructField("index", IntegerType()),
                              StructField("score", FloatType())]))
SCHEMA = StructType([
    StructField("path", StringType()),
    StructField("logits", ArrayType(FloatType())),
    StructField("top", TOP_K),
    StructField("score", DoubleType()),
    StructField("by_label", MapType(StringType(), ArrayType(DoubleType()))),
    StructField("count", IntegerType()),
])


def test_float_leaves_at_any_depth_get_their_parquet_paths() -> None:
    assert float_column_paths(SCHEMA) == ["logits.list.element", "top.list.element.score", "score",
                                          "by_label.key_value.value.list.element"]


def test_options_only_for_parquet_in_the_standard_layout() -> None:
    options = table_options("parquet", SCHEMA)
    assert options == {"parquet.enable.dictionary#logits.list.element": "false",
                       "parquet.enable.dictionary#top.list.element.score": "false",
                       "parquet.enable.dictionary#score": "false",
                       "parquet.enable.dictionary#by_label.key_value.value.list.element": "false"}
    assert table_options("PARQUET", SCHEMA) == options
    assert table_options("parquet", SCHEMA, legacy_parquet=True) == {}
    assert table_options("orc", SCHEMA) == {}
    assert table_options("parquet", StructType([StructField("path", StringType())])) == {}
