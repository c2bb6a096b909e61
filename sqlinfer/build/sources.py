"""A project's sources as temporary views: files read with a Spark data source, or a table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.build.config import Source
from sqlinfer.errors import BuildError
from sqlinfer.paths import inside
from sqlinfer.runtime.settings import conf_text
from sqlinfer.runtime.spark_errors import first_line
from sqlinfer.yamlfile import LineDict

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# How a binaryFile source's files become tasks. Spark packs files by bytes into pieces, counting
# each file as at least spark.sql.files.openCostInBytes; sqlinfer merges the pieces (a coalesce: no
# shuffle) into about TASKS_PER_CORE tasks per core of equal numbers of files. A model's time goes
# by rows, not bytes: packing the files by bytes into one task per core gave the bench's 1,000
# JPEGs tasks of 424 and 576 rows, and one core idled for the last 5 s of 21 (docs/performance.md).
# Several equal tasks per core keep every core busy to the end; the caps keep a task's retry small
# on big sources.
TASKS_PER_CORE = 4
MAX_FILES_PER_TASK = 1024
# Pieces per task, at least, where the files allow: tasks then differ by at most a small piece.
# With Spark's 4 MB open cost a piece held 32 small files, so the bench's 1,000 JPEGs made tasks
# of 7 x 128 and 104 rows, and on 2 cores one core worked alone on the last 24 rows (about 1 s).
PIECES_PER_TASK = 32
# Below this many bytes of files per task (Spark's openCostInBytes: its own idea of a file's
# cost), a source gets fewer tasks per core, down to one: small files decode in no time, and
# each task's fixed cost (about 0.1 s for the JVM and a Python worker) is what would be split.
# projects/digits (1,797 PNGs, 0.3 MB): 2 tasks on 2 cores instead of 8, its table node about 15%
# faster; the bench's 1,000 JPEGs (46 MB) keep their 8.
SMALL_TASK_BYTES = 4 * 1024 * 1024


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
        files: int | None = None  # a file source's file count, listed when its frame is made
        try:
            if source.table is not None:
                frame = spark.table(source.table)
            else:
                assert source.path is not None and source.format is not None
                path = _source_path(root, source.path, project_file, line)
                if source.format == "binaryFile":
                    frame, files = binary_files(spark, path, _options(source), source.files_per_task)
                else:
                    frame = spark.read.format(source.format).options(**_options(source)).load(path)
                    files = _file_count(frame)
            for column, expression in source.columns.items():
                frame = frame.withColumn(column, F.expr(expression))
        except (AnalysisException, ParseException) as exc:
            raise BuildError(f"source {name!r} cannot be read: {first_line(str(exc))}",
                             code="source.unreadable", path=project_file, line=line) from None
        frame.createOrReplaceTempView(name)
        if files == 0:
            where = f"{project_file}:{line}" if line else str(project_file)
            what = f"source {name!r} matches no file ({source.path}{', ' + source.glob if source.glob else ''})"
            if source.required:
                raise BuildError(f"{what}, and it is declared `required: true`", code="source.empty",
                                 path=project_file, line=line)
            warnings.append(f"{where}: {what}: the nodes that read it get no rows")
    return warnings


def _file_count(frame: DataFrame) -> int | None:
    """How many files a file source found (listed when the frame is made: no Spark job); None for
    a source kind without a file listing. Counted in the JVM: ``frame.inputFiles()`` would bring
    every path to Python one py4j call at a time (0.3 s for the 1,797 digits files)."""
    try:
        return len(frame._jdf.inputFiles())
    except Exception:
        return None


def binary_files(spark: SparkSession, path: str, options: Mapping[str, str],
                 files_per_task: int | None = None) -> tuple[DataFrame, int | None]:
    """The binaryFile read of ``path`` (with the reader ``options``) as a frame of ``spark``, in
    tasks of equal numbers of files (:func:`pack_files`), and how many files it found.

    The files are read in a session of their own (``newSession``: the same SparkContext, settings
    and catalog; SQL settings of its own), whose frame then joins ``spark``: a file scan cuts its
    pieces with the settings of the session that read it, so the pieces can be made smaller for
    this source alone (:func:`pack_files`), where a larger open cost for the whole session would
    also cut every table it reads from small parquet files into more tasks. A SQL setting changed
    later in ``spark`` (``SET spark.sql.files...``) does not reach this source's scan."""
    from pyspark.sql import DataFrame

    scan = spark._jsparkSession.newSession()
    reader = scan.read().format("binaryFile")
    for key, value in options.items():
        reader = reader.option(key, value)
    read = reader.load(path)
    jvm = spark._jvm
    assert jvm is not None
    frame = DataFrame(jvm.org.apache.spark.sql.classic.Dataset.ofRows(spark._jsparkSession, read.logicalPlan()), spark)
    files = _file_count(frame)
    return (pack_files(spark, frame, files_per_task, files, scan) if files else frame), files


def pack_files(spark: SparkSession, frame: DataFrame, files_per_task: int | None, files: int, scan: Any) -> DataFrame:
    """A one-row-per-file frame (binaryFile) of ``files`` files in tasks of equal numbers of files:
    ``files_per_task`` each when given, else :func:`task_count`'s.

    Spark's pieces are merged, never split. ``scan``, the (JVM) session that read the files
    (:func:`binary_files`), gets an open cost per file that makes pieces of :func:`piece_files`
    small files, so that every task holds many pieces and tasks differ by at most one (with
    Spark's 4 MB open cost a piece holds up to 32 small files)."""
    conf = spark._jsparkSession.sessionState().conf()
    max_task_bytes = int(conf.filesMaxPartitionBytes())
    if files_per_task is not None:
        tasks = math.ceil(files / files_per_task)
    else:
        total_bytes = int(frame._jdf.queryExecution().optimizedPlan().stats().sizeInBytes())
        tasks = task_count(files, total_bytes, spark.sparkContext.defaultParallelism, max_task_bytes)
    # Read when the scan is planned (each query), so setting it now is in time. Only raised: a
    # larger open cost than the user's own makes pieces of fewer files.
    open_cost = max(int(scan.sessionState().conf().filesOpenCostInBytes()), max_task_bytes // piece_files(files, tasks))
    scan.conf().set("spark.sql.files.openCostInBytes", str(open_cost))
    return frame.coalesce(tasks)


def piece_files(files: int, tasks: int) -> int:
    """Small files per piece for ``files`` files in ``tasks`` tasks: :data:`PIECES_PER_TASK`
    pieces a task where there are that many files, one file a piece below. The bench's 1,000
    JPEGs in 8 tasks: pieces of 3 files, tasks of 123-126 (of 7 x 128 and 104 with Spark's
    pieces of 32); a million files in 977 tasks keep Spark's 32."""
    return max(1, files // (tasks * PIECES_PER_TASK))


def task_count(files: int, total_bytes: int, cores: int, max_task_bytes: int) -> int:
    """Tasks for ``files`` files of ``total_bytes`` on ``cores`` cores: TASKS_PER_CORE per core
    (fewer, down to one, where tasks would hold under SMALL_TASK_BYTES each), more where a task
    would hold over MAX_FILES_PER_TASK files or spark.sql.files.maxPartitionBytes."""
    per_core = min(TASKS_PER_CORE, max(1, math.ceil(total_bytes / (cores * SMALL_TASK_BYTES))))
    return min(files, max(cores * per_core, math.ceil(files / MAX_FILES_PER_TASK),
                          math.ceil(total_bytes / max_task_bytes)))


def _options(source: Source) -> dict[str, str]:
    """The reader options of a file source: its glob, recursion and own ``options``."""
    options = {}
    if source.glob:
        options["pathGlobFilter"] = source.glob
    if source.recursive:
        options["recursiveFileLookup"] = "true"
    options.update({key: conf_text(value) for key, value in source.options.items()})
    return options


def _source_path(root: Path, path: str, project_file: Path, line: int | None) -> str:
    """Relative paths are relative to the project; URIs (s3a://, hdfs://) and absolute paths pass."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str(inside(root, path, what="source path", path=project_file, line=line))
