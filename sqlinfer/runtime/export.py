"""Writing a query result to one local file (.parquet, .csv or .json)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sqlinfer.errors import CommandError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json"}


def write_single_file(frame: DataFrame, path: Path) -> int:
    """Write ``frame`` as exactly one file at ``path``; returns the row count.

    Spark writes folders of part files; this writes one partition to a temporary folder beside the
    file and moves the part file into place, so a failed write leaves no half-written ``path``.
    CSV cannot hold structs or arrays: those columns are written as JSON text.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, MapType, StructType

    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CommandError(f"cannot tell the format of {path}: use one of {', '.join(FORMATS)}",
                            code="cli.bad_output")
    if fmt == "csv":
        frame = frame.select([
            F.to_json(F.col(f.name)).alias(f.name) if isinstance(f.dataType, (ArrayType, MapType, StructType))
            else F.col(f.name) for f in frame.schema.fields])
    frame = frame.cache()
    try:
        count = frame.count()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            writer = frame.coalesce(1).write.mode("overwrite").format(fmt)
            if fmt == "csv":
                # RFC 4180 quoting (Spark's default escapes quotes with a backslash).
                writer = writer.option("header", "true").option("escape", '"')
            writer.save(str(Path(tmp) / "out"))
            (part,) = [p for p in (Path(tmp) / "out").iterdir() if p.name.startswith("part-")]
            shutil.move(str(part), str(path))
    finally:
        frame.unpersist()
    return count
