"""`build` on a real session: the digits project end to end, incremental scoring of new rows only,
fingerprint-triggered rebuilds, errors that name file and line and change no table, var quoting."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from helpers import digits_declaration, own_database, own_nodes, write_project

from sqlinfer import Project, SqlinferError

pytestmark = pytest.mark.spark


def rows(spark, table: str, drop: tuple[str, ...] = ()) -> list:
    frame = spark.table(table).drop(*drop)
    return sorted(tuple(r) for r in frame.collect())


DICTIONARY_ENCODINGS = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}


def column_encodings(files: list[str]) -> dict[str, set[str]]:
    """Parquet column path -> the encodings its chunks use, over all row groups of ``files``."""
    import pyarrow.parquet as pq

    found: dict[str, set[str]] = {}
    for file in files:
        metadata = pq.ParquetFile(file.removeprefix("file:")).metadata
        for group in range(metadata.num_row_groups):
            for index in range(metadata.num_columns):
                column = metadata.row_group(group).column(index)
                found.setdefault(column.path_in_schema, set()).update(column.encodings)
    return found


def node_result(project: Project, name: str) -> dict:
    results = json.loads((project.target / "run_results.json").read_text())
    return next(n for n in results["nodes"] if n["name"] == name)


def test_digits_builds_every_node_twice_identically(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    project = Project.load(digits_copy)
    lines: list[str] = []
    first = project.build(spark, report=lines.append)
    assert first.success, [n.message for n in first.nodes]
    assert [n.name for n in first.nodes] == ["digit_predictions", "accuracy", "confusion_matrix",
                                             "digit_predictions_incremental"]
    assert {n.name: n.rows for n in first.nodes if n.rows is not None} == {
        "digit_predictions": 1797, "digit_predictions_incremental": 1797}
    assert any(line.startswith("[1/4] START table digit_predictions") for line in lines)
    assert any("1,797 rows" in line and "rows/s" in line for line in lines)
    assert lines[-1].startswith("Done in ") and "4 ok, 0 error, 0 skipped" in lines[-1]

    accuracy = spark.table("accuracy").first()
    assert accuracy.split == "test" and accuracy.images == 450
    assert accuracy.accuracy >= 0.95
    matrix = spark.table("confusion_matrix").collect()
    assert len(matrix) == 10 and sum(sum(c or 0 for c in r[1:]) for r in matrix) == 450
    assert sum(r[r.label + 1] or 0 for r in matrix) == accuracy.correct

    results = json.loads((project.target / "run_results.json").read_text())
    assert results["success"] is True
    table = node_result(project, "digit_predictions")
    assert table["status"] == "success" and table["rows"] == 1797 and table["rows_scored"] == 1797
    # The node calls one function, for the label and the probabilities of one forward pass.
    fingerprints = {m.plan.udf_name: m.plan.fingerprint for m in project.resolve_models()}
    assert table["models"] == {"digits_scores": fingerprints["digits_scores"]}
    # Where it ran: the local master's one executor, tasks none retried (docs/cluster.md has clusters).
    assert table["executors"] == ["driver"] and table["tasks"] >= 1 and table["tasks_retried"] == 0
    workers = results["model_workers"]["digits_predict"]
    # At most once per Python worker (none where an earlier test's worker already holds this model).
    assert set(workers["builds"].values()) <= {1}
    assert workers["weights_reads"] == workers["builds"]  # the broadcast read once per build
    # The compiled SQL is what ran: ref() to a table names it in the project's own database.
    source = (digits_copy / "sql" / "accuracy.sql").read_text()
    assert (project.target / "compiled" / "accuracy.sql").read_text() == (
        source.replace("{{ config(materialized='view') }}", "")
        .replace("{{ ref('digit_predictions') }}", f"`{database}`.`digit_predictions`")
        .replace("{{ var('eval_split', 'test') }}", "'test'"))

    # Float columns are written without parquet's dictionary (sqlinfer/build/write_options.py),
    # named in the table's definition; test_float_columns_written_without_dictionary shows the effect.
    assert set(described(spark, f"{database}.digit_predictions")["Storage Properties"].strip("[]").split(", ")) == {
        "parquet.enable.dictionary#probabilities.list.element=false", "parquet.enable.dictionary#score=false"}

    before = (rows(spark, f"{database}.digit_predictions"),
              rows(spark, f"{database}.digit_predictions_incremental", drop=("scored_at",)))
    second = Project.load(digits_copy).build(spark)
    assert second.success
    after = (rows(spark, f"{database}.digit_predictions"),
             rows(spark, f"{database}.digit_predictions_incremental", drop=("scored_at",)))
    assert after == before
    assert {n.name: n.rows_scored for n in second.nodes} == {
        "digit_predictions": 1797, "accuracy": 0, "confusion_matrix": 0, "digit_predictions_incremental": 0}
    # The replaced table is dropped with its folder at the end of the build (Materializer.drop_replaced).
    names = {t.name for t in spark.catalog.listTables(database)}
    assert "digit_predictions" in names and not {n for n in names if n.endswith(("__sqlinfer_old", "__sqlinfer_new"))}
    location = next(r.info_value for r in spark.sql(f"DESCRIBE DATABASE {database}").collect()
                    if r.info_name == "Location")
    folders = {p.name for p in Path(location.removeprefix("file:")).iterdir()}
    assert "digit_predictions" in folders and "digit_predictions__sqlinfer_old" not in folders


def described(spark, table: str) -> dict[str, str]:
    """``DESCRIBE TABLE EXTENDED``'s rows: what it names (a column, Location, Statistics, ...) -> its value."""
    return {r.col_name: r.data_type for r in spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect()}


def table_node_project(root: Path, select: str) -> tuple[Path, Path, str]:
    """A project without models whose one node, sql/numbers.sql, is a table of ``select``:
    its folder, the node's file and its database."""
    write_project(root, "models: []\n")
    (root / "sql").mkdir()
    node = root / "sql" / "numbers.sql"
    node.write_text(f"{{{{ config(materialized='table') }}}}\n{select}\n")
    return root, node, own_database(root)


def test_a_cached_table_is_read_afresh_after_its_rebuild(spark, tmp_path: Path) -> None:
    """A build swaps folders, or renames tables through the session catalog (which skips ALTER
    TABLE's look-up of cached data), only while nothing is cached (Materializer._swappable_folder,
    _rename): with the node's table cached (a CACHE TABLE in a `sqlinfer serve` session, say), the
    rebuilt table is what queries read."""
    root, node, database = table_node_project(tmp_path / "cached", "SELECT id FROM range(3)")
    assert Project.load(root).build(spark).success
    spark.sql(f"CACHE TABLE `{database}`.`numbers`")
    try:
        assert spark.table(f"{database}.numbers").count() == 3
        node.write_text("{{ config(materialized='table') }}\nSELECT id FROM range(5)\n")
        (result,) = Project.load(root).build(spark).nodes
        assert (result.status, result.action, result.rows) == ("success", "rebuilt", 5)
        assert sorted(r.id for r in spark.table(f"{database}.numbers").collect()) == [0, 1, 2, 3, 4]
    finally:
        spark.catalog.clearCache()


def test_a_rebuild_with_the_same_columns_swaps_folders_and_keeps_the_tables_entry(spark, tmp_path: Path) -> None:
    """A table rebuilt with the same columns keeps its metastore entry (Materializer._swap_folders):
    new files, the model fingerprints recorded again, the size statistics Spark's planner reads
    counted afresh, nothing left beside it; new columns still get a new table, which keeps the
    properties and comment the user gave the old one."""
    root, node, database = table_node_project(tmp_path / "folders",
                                              "SELECT id, CAST(id AS FLOAT) AS score FROM range(3)")
    assert Project.load(root).build(spark).success
    table = f"`{database}`.`numbers`"

    # A stale fingerprint, as an older build with another model would have left it, and a property
    # of the user's own, which only the same metastore entry keeps.
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ('sqlinfer.models' = '{{\"old\": \"x\"}}', "
              "'team' = 'vision')")
    node.write_text("{{ config(materialized='table') }}\nSELECT id, CAST(id AS FLOAT) AS score FROM range(5000)\n")
    (result,) = Project.load(root).build(spark).nodes
    assert (result.status, result.action, result.rows) == ("success", "rebuilt", 5000)
    after = described(spark, table)
    assert "team=vision" in after["Table Properties"]  # the same entry: folders were swapped, not tables
    assert "sqlinfer.models={}" in after["Table Properties"]
    folder = Path(after["Location"].removeprefix("file:"))
    data_bytes = sum(f.stat().st_size for f in folder.glob("part-*"))
    assert after["Statistics"] == f"{data_bytes} bytes, 0 rows"  # the new files', not the old ones'
    assert spark.table(table).count() == 5000
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("numbers")) == ["numbers"]

    # New columns need a new entry: tables are swapped, and the new one gets what the user set on
    # the old one (its properties, its comment), with the build's own properties recorded afresh.
    spark.sql(f"COMMENT ON TABLE {table} IS \"scores, it's the team's\"")
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ('sqlinfer.models' = '{{\"old\": \"y\"}}')")
    node.write_text("{{ config(materialized='table') }}\nSELECT id, CAST(id AS FLOAT) AS score, 'x' AS label "
                    "FROM range(4)\n")
    (result,) = Project.load(root).build(spark).nodes
    assert (result.status, result.action, result.rows) == ("success", "rebuilt", 4)
    assert spark.table(table).columns == ["id", "score", "label"]
    swapped = described(spark, table)
    assert swapped["Comment"] == "scores, it's the team's"
    properties = swapped["Table Properties"].strip("[]").split(", ")
    assert sorted(properties) == ["sqlinfer.models={}", "sqlinfer.node=numbers", "team=vision"], properties


def test_a_backup_folder_is_not_restored_into_a_folder_the_table_no_longer_reads(spark, tmp_path: Path) -> None:
    """recover() moves a folder swap's backup folder back only for a table that still lives in
    its database's folder: here the table was moved elsewhere by hand, and a stray backup folder
    beside its old place must neither become that place nor stop the rebuild."""
    import shutil

    root, node, database = table_node_project(tmp_path / "moved", "SELECT id FROM range(3)")
    assert Project.load(root).build(spark).success
    table = f"`{database}`.`numbers`"
    old_place = Path(described(spark, table)["Location"].removeprefix("file:"))
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(old_place, elsewhere)
    spark.sql(f"ALTER TABLE {table} SET LOCATION '{elsewhere}'")
    shutil.move(str(old_place), str(old_place.with_name("numbers__sqlinfer_old")))  # the stray backup folder
    spark.catalog.refreshTable(f"{database}.numbers")
    assert spark.table(table).count() == 3

    node.write_text("{{ config(materialized='table') }}\nSELECT id FROM range(5)\n")
    (result,) = Project.load(root).build(spark).nodes
    assert (result.status, result.action, result.rows, result.message) == ("success", "rebuilt", 5, ""), result.message
    assert sorted(r.id for r in spark.table(table).collect()) == [0, 1, 2, 3, 4]
    assert not old_place.with_name("numbers__sqlinfer_old").exists()


def test_an_append_moves_the_staged_files_into_the_tables_folder(spark, tmp_path: Path) -> None:
    """An incremental table's new rows are written once, into the staging folder, and those files
    moved into the table's folder (Materializer._append_files): the metastore entry stays (a
    property of the user's survives), the size statistics count the new files too, nothing is
    left beside the table, and a build with no new rows adds no file."""
    root, node, database = table_node_project(tmp_path / "appends", "SELECT 1")
    node.write_text("{{ config(materialized='incremental', unique_key='id') }}\n"
                    "SELECT id, CAST(id AS FLOAT) AS score FROM range({{ var('n', 3) }})\n")
    table = f"`{database}`.`numbers`"

    def build(n: int) -> tuple[str, str, int | None]:
        (result,) = Project.load(root, {"n": n}).build(spark).nodes
        return result.status, result.action, result.rows

    assert build(3) == ("success", "created", 3)
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ('team' = 'vision')")
    folder = Path(described(spark, table)["Location"].removeprefix("file:"))
    first = {f.name for f in folder.glob("part-*")}

    assert build(7) == ("success", "appended", 4)
    after = described(spark, table)
    assert "team=vision" in after["Table Properties"]  # the same entry
    files = {f.name for f in folder.glob("part-*")}
    assert first < files  # the first build's files stay; the new rows came as files of their own
    assert after["Statistics"] == f"{sum((folder / f).stat().st_size for f in files)} bytes, 0 rows"
    assert sorted((r.id, r.score) for r in spark.table(table).collect()) == [(i, float(i)) for i in range(7)]
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("numbers")) == ["numbers"]

    assert build(7) == ("success", "appended", 0)
    assert {f.name for f in folder.glob("part-*")} == files
    assert spark.table(table).count() == 7


def test_a_partitioned_append_moves_files_into_old_and_new_partitions(spark, tmp_path: Path) -> None:
    """An append to a partitioned incremental table moves its staged files into the partitions'
    folders, registering the partitions that are new first: rows reach partitions that existed
    (one whose value needs escaping in a folder name) and new ones (the NULL partition too), every
    partition is registered once, pruning finds them, and nothing is left beside the table. The
    SELECT names the partition column in the middle; the table keeps it last. A full refresh then
    rebuilds it whole."""
    root, node, database = table_node_project(tmp_path / "partitioned", "SELECT 1")
    node.write_text("{{ config(materialized='incremental', unique_key='id', partition_by='day') }}\n"
                    "SELECT id, CASE WHEN id % 5 = 4 THEN NULL ELSE concat('d', id % 2, ' a/b') END AS day,\n"
                    "       CAST(id AS FLOAT) AS score FROM range({{ var('n', 3) }})\n")
    table = f"`{database}`.`numbers`"

    def build(n: int) -> tuple[str, str, int | None]:
        (result,) = Project.load(root, {"n": n}).build(spark).nodes
        return result.status, result.action, result.rows

    def day(i: int) -> str | None:
        return None if i % 5 == 4 else f"d{i % 2} a/b"

    def files() -> dict[str, set[str]]:
        return {p.name: {f.name for f in p.glob("part-*")} for p in folder.iterdir() if p.is_dir()}

    assert build(3) == ("success", "created", 3)
    folder = Path(described(spark, table)["Location"].removeprefix("file:"))
    first = files()
    assert sorted(first) == ["day=d0 a%2Fb", "day=d1 a%2Fb"]

    assert build(10) == ("success", "appended", 7)
    assert [f.name for f in spark.table(table).schema.fields] == ["id", "score", "day"]
    assert sorted(tuple(r) for r in spark.table(table).collect()) == [(i, float(i), day(i)) for i in range(10)]
    partitions = [r[0] for r in spark.sql(f"SHOW PARTITIONS {table}").collect()]
    assert sorted(partitions) == ["day=__HIVE_DEFAULT_PARTITION__", "day=d0 a%2Fb", "day=d1 a%2Fb"]
    after = files()
    assert sorted(after) == sorted(partitions)
    for name, old in first.items():
        assert old < after[name]  # the first build's files stay; the new rows came as files of their own
    assert spark.sql(f"SELECT count(*) FROM {table} WHERE day IS NULL").first()[0] == 2
    assert spark.sql(f"SELECT count(*) FROM {table} WHERE day = 'd0 a/b'").first()[0] == 4
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("numbers")) == ["numbers"]

    assert build(15) == ("success", "appended", 5)  # the NULL partition exists now: one entry still
    assert sorted(r[0] for r in spark.sql(f"SHOW PARTITIONS {table}").collect()) == sorted(partitions)
    assert spark.sql(f"SELECT count(*) FROM {table} WHERE day IS NULL").first()[0] == 3
    assert build(15) == ("success", "appended", 0)
    assert spark.table(table).count() == 15

    # A full refresh of a partitioned table swaps tables (a folder swap would leave the partitions'
    # entries behind): the same rows and partitions, and no staging or backup table left.
    (result,) = Project.load(root, {"n": 12}).build(spark, full_refresh=True).nodes
    assert (result.status, result.action, result.rows) == ("success", "full refresh", 12)
    assert sorted(tuple(r) for r in spark.table(table).collect()) == [(i, float(i), day(i)) for i in range(12)]
    assert sorted(r[0] for r in spark.sql(f"SHOW PARTITIONS {table}").collect()) == sorted(partitions)
    assert spark.sql(f"SELECT count(*) FROM {table} WHERE day IS NULL").first()[0] == 2
    tables = spark.sql(f"SHOW TABLES IN `{database}`").collect()
    assert [r.tableName for r in tables if not r.isTemporary] == ["numbers"]  # other tests' views are temporary


def test_an_append_to_a_table_of_two_partition_columns(spark, tmp_path: Path) -> None:
    """Partition folders two levels deep (a string column, then an INT one): the append finds its
    files at that depth and registers each new (day, hour) pair, and the rows read back whole. A
    changed partition_by is named on the node's line, not silently ignored."""
    root, node, database = table_node_project(tmp_path / "two_levels", "SELECT 1")
    node.write_text("{{ config(materialized='incremental', unique_key='id', partition_by=['day', 'hour']) }}\n"
                    "SELECT id, concat('d', id % 2) AS day, CAST(id % 3 AS INT) AS hour, CAST(id AS FLOAT) AS score\n"
                    "FROM range({{ var('n', 4) }})\n")
    table = f"`{database}`.`numbers`"
    assert Project.load(root, {"n": 4}).build(spark).success
    (result,) = Project.load(root, {"n": 9}).build(spark).nodes
    assert (result.status, result.action, result.rows) == ("success", "appended", 5)
    assert sorted((r.id, r.score, r.day, r.hour) for r in spark.table(table).collect()) == \
        [(i, float(i), f"d{i % 2}", i % 3) for i in range(9)]
    assert sorted(r[0] for r in spark.sql(f"SHOW PARTITIONS {table}").collect()) == \
        [f"day=d{d}/hour={h}" for d in (0, 1) for h in (0, 1, 2)]
    assert spark.sql(f"SELECT count(*) FROM {table} WHERE day = 'd1' AND hour = 2").first()[0] == 1  # id 5

    # partition_by changed in config(): the append goes in as the table is partitioned, and says so.
    node.write_text(node.read_text().replace("partition_by=['day', 'hour']", "partition_by='day'"))
    (result,) = Project.load(root, {"n": 10}).build(spark).nodes
    assert (result.status, result.action, result.rows) == ("success", "appended", 1)
    assert result.message == ("the table is partitioned by day, hour, config() says partition_by day: rows were "
                              "appended as the table is; --full-refresh partitions it anew")
    assert sorted(r[0] for r in spark.sql(f"SHOW PARTITIONS {table}").collect())[-1] == "day=d1/hour=2"
    assert spark.table(table).count() == 10


def test_a_partitioned_append_finds_each_partitions_folder_by_look_up_or_by_listing(spark, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """The partitions an append touches get their folders from the metastore: by a look-up each
    when the table has many partitions beside them (one row into one of 40), from one listing of
    the table's partitions when it has few per touched one (a backfill of 45). Either way the rows
    reach a partition moved elsewhere by hand (SET LOCATION), new partitions are registered once,
    and every row reads back."""
    from sqlinfer.build.materialize import Materializer

    used: list[str] = []
    for method in ("_looked_up_locations", "_listed_locations"):
        real = getattr(Materializer, method)

        def spy(self, *args, _real=real, _name=method):  # the real method, its use recorded
            used.append(_name)
            return _real(self, *args)
        monkeypatch.setattr(Materializer, method, spy)

    root, node, database = table_node_project(tmp_path / "located", "SELECT 1")
    node.write_text("{{ config(materialized='incremental', unique_key='id', partition_by='day') }}\n"
                    "SELECT id, concat('d', id % {{ var('days') }}) AS day, CAST(id AS FLOAT) AS score\n"
                    "FROM range({{ var('n') }})\n")
    table = f"`{database}`.`numbers`"

    def build(n: int, days: int) -> tuple[str, str, int | None]:
        (result,) = Project.load(root, {"n": n, "days": days}).build(spark).nodes
        return result.status, result.action, result.rows

    assert build(40, 40) == ("success", "created", 40)  # partitions d0 .. d39, a row each
    folder = Path(described(spark, table)["Location"].removeprefix("file:"))
    elsewhere = tmp_path / "elsewhere_d0"
    shutil.move(folder / "day=d0", elsewhere)
    spark.sql(f"ALTER TABLE {table} PARTITION (day = 'd0') SET LOCATION '{elsewhere}'")
    spark.catalog.refreshTable(f"{database}.numbers")
    used.clear()

    assert build(41, 40) == ("success", "appended", 1)  # id 40 into d0
    assert used == ["_looked_up_locations"]
    assert len(list(elsewhere.glob("part-*"))) == 2 and not (folder / "day=d0").exists()
    assert sorted(r.id for r in spark.sql(f"SELECT id FROM {table} WHERE day = 'd0'").collect()) == [0, 40]

    used.clear()
    assert build(90, 45) == ("success", "appended", 49)  # ids 41 .. 89 into d0 .. d44, d40 .. d44 new
    assert used == ["_listed_locations", "_listed_locations"]  # the second finds the new partitions
    assert len(list(elsewhere.glob("part-*"))) == 3 and not (folder / "day=d0").exists()
    assert sorted(r.id for r in spark.sql(f"SELECT id FROM {table} WHERE day = 'd0'").collect()) == [0, 40, 45]
    partitions = sorted(r[0] for r in spark.sql(f"SHOW PARTITIONS {table}").collect())
    assert partitions == sorted(f"day=d{d}" for d in range(45))
    assert sorted(r.id for r in spark.table(table).collect()) == list(range(90))
    assert spark.sql(f"SELECT count(*) FROM {table} WHERE day = 'd44'").first()[0] == 2  # ids 44 and 89


def test_an_append_to_a_table_outside_its_databases_folder_goes_through_a_staging_table(spark,
                                                                                       tmp_path: Path) -> None:
    """A table moved elsewhere by hand (SET LOCATION) gets its new rows through a staging table
    and an INSERT, into the folder it reads now; nothing is left beside the database's folder."""
    root, node, database = table_node_project(tmp_path / "moved", "SELECT 1")
    node.write_text("{{ config(materialized='incremental', unique_key='id') }}\n"
                    "SELECT id, CAST(id AS FLOAT) AS score FROM range({{ var('n', 3) }})\n")
    table = f"`{database}`.`numbers`"
    assert Project.load(root, {"n": 3}).build(spark).success
    folder = Path(described(spark, table)["Location"].removeprefix("file:"))
    elsewhere = tmp_path / "elsewhere"
    shutil.move(folder, elsewhere)
    spark.sql(f"ALTER TABLE {table} SET LOCATION '{elsewhere}'")
    before = {f.name for f in elsewhere.glob("part-*")}

    (result,) = Project.load(root, {"n": 5}).build(spark).nodes
    assert (result.status, result.action, result.rows) == ("success", "appended", 2)
    assert sorted((r.id, r.score) for r in spark.table(table).collect()) == [(i, float(i)) for i in range(5)]
    assert before < {f.name for f in elsewhere.glob("part-*")}
    assert not folder.exists() and not [p for p in folder.parent.iterdir() if p.name.startswith("numbers")]


FLOATS_AND_A_LABEL = ("SELECT CAST(id % 3 AS FLOAT) AS score, array(CAST(id % 3 AS DOUBLE)) AS scores, "
                      "CAST(id % 3 AS STRING) AS label FROM range(3000)")


def test_float_columns_written_without_dictionary(spark, tmp_path: Path) -> None:
    """The options a build gives its tables keep parquet's dictionary off exactly for float columns,
    here where it would pay (three distinct values): the key format works in this Spark's parquet.
    The user's own setting wins."""
    from sqlinfer.build.write_options import table_options

    options = table_options("parquet", spark.sql(FLOATS_AND_A_LABEL).schema)
    assert options == {"parquet.enable.dictionary#score": "false",
                       "parquet.enable.dictionary#scores.list.element": "false"}
    clause = ", ".join(f"'{key}' = '{value}'" for key, value in options.items())
    spark.sql(f"CREATE TABLE dictionary_probe USING parquet OPTIONS ({clause}) "
              f"LOCATION '{tmp_path / 'probe'}' AS {FLOATS_AND_A_LABEL}")
    spark.sql(f"CREATE TABLE dictionary_on USING parquet OPTIONS ('parquet.enable.dictionary' = 'true') "
              f"LOCATION '{tmp_path / 'on'}' AS {FLOATS_AND_A_LABEL}")
    try:
        probe = column_encodings(spark.table("dictionary_probe").inputFiles())
        on = column_encodings(spark.table("dictionary_on").inputFiles())
    finally:
        spark.sql("DROP TABLE dictionary_probe")
        spark.sql("DROP TABLE dictionary_on")
    assert set(probe) == {"score", "scores.list.element", "label"}
    for column in ("score", "scores.list.element"):
        assert on[column] & DICTIONARY_ENCODINGS and not probe[column] & DICTIONARY_ENCODINGS
    assert probe["label"] & DICTIONARY_ENCODINGS


def test_every_parquet_write_of_the_session_keeps_floats_plain(spark, tmp_path: Path) -> None:
    """sqlinfer's Spark extension (resources/PlainFloats.java) gives any statement's Parquet files
    the build's treatment: CREATE TABLE AS SELECT (the options kept in the table's definition), a
    Hive-format one (STORED AS PARQUET: Spark writes its files through an INSERT it analyzes, which
    the rule sees), INSERT, a DataFrame write; the label keeps its dictionary."""
    spark.sql(f"CREATE TABLE plain_floats USING parquet LOCATION '{tmp_path / 'ctas'}' AS {FLOATS_AND_A_LABEL}")
    spark.sql(f"CREATE TABLE plain_floats_hive STORED AS PARQUET AS {FLOATS_AND_A_LABEL}")
    try:
        created = column_encodings(spark.table("plain_floats").inputFiles())
        properties = {row.key: row.value for row in spark.sql("SHOW TBLPROPERTIES plain_floats").collect()}
        storage = described(spark, "plain_floats")["Storage Properties"]
        spark.sql(f"INSERT OVERWRITE TABLE plain_floats {FLOATS_AND_A_LABEL}")
        inserted = column_encodings(spark.table("plain_floats").inputFiles())
        hive = column_encodings(spark.table("plain_floats_hive").inputFiles())
        spark.sql(f"INSERT INTO plain_floats_hive {FLOATS_AND_A_LABEL}")
        hive_inserted = column_encodings(spark.table("plain_floats_hive").inputFiles())
    finally:
        spark.sql("DROP TABLE plain_floats")
        spark.sql("DROP TABLE IF EXISTS plain_floats_hive")
    spark.sql(FLOATS_AND_A_LABEL).write.parquet(str(tmp_path / "written"))
    written = column_encodings([str(p) for p in (tmp_path / "written").glob("*.parquet")])
    spark.sql("SELECT named_struct('p', CAST(id % 3 AS FLOAT), 'name', CAST(id % 3 AS STRING)) AS s, "
              "map(CAST(id % 3 AS STRING), CAST(id % 3 AS DOUBLE)) AS m FROM range(3000)"
              ).write.parquet(str(tmp_path / "nested"))
    nested = column_encodings([str(p) for p in (tmp_path / "nested").glob("*.parquet")])
    assert set(nested) == {"s.p", "s.name", "m.key_value.key", "m.key_value.value"}
    assert not (nested["s.p"] | nested["m.key_value.value"]) & DICTIONARY_ENCODINGS
    assert nested["s.name"] & DICTIONARY_ENCODINGS and nested["m.key_value.key"] & DICTIONARY_ENCODINGS
    for encodings in (created, inserted, written, hive, hive_inserted):
        assert set(encodings) == {"score", "scores.list.element", "label"}
        assert not encodings["score"] & DICTIONARY_ENCODINGS
        assert not encodings["scores.list.element"] & DICTIONARY_ENCODINGS
        assert encodings["label"] & DICTIONARY_ENCODINGS
    assert storage == ("[parquet.enable.dictionary#score=false, "
                       "parquet.enable.dictionary#scores.list.element=false]")
    assert not any(key.startswith("parquet.") for key in properties)


def test_incremental_scores_only_new_rows(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    select = ("digit_predictions_incremental",)
    assert Project.load(digits_copy).build(spark, select=select).success
    originals = sorted((digits_copy / "data" / "images" / "test").rglob("*.png"))[:100]
    for index, path in enumerate(originals):
        shutil.copy(path, path.with_name(f"new_{index:03d}.png"))

    result = Project.load(digits_copy).build(spark, select=select)
    (node,) = result.nodes
    assert node.status == "success", node.message
    assert node.action == "appended"
    assert node.rows == 100
    assert node.rows_scored == 100  # rows that went through digits_predict
    counts = spark.sql(f"SELECT count(*) AS n, count(DISTINCT path) AS keys "
                       f"FROM {database}.digit_predictions_incremental").first()
    assert counts.n == counts.keys == 1897

    # Nothing new: nothing scored, nothing appended.
    (node,) = Project.load(digits_copy).build(spark, select=select).nodes
    assert (node.rows, node.rows_scored) == (0, 0)

    # --full-refresh rebuilds everything.
    (node,) = Project.load(digits_copy).build(spark, select=select, full_refresh=True).nodes
    assert (node.action, node.rows, node.rows_scored) == ("full refresh", 1897, 1897)


TWO_MODELS = "models:\n" + digits_declaration("digits") + digits_declaration(
    "digits_b", labels="[zero, one, two, three, four, five, six, seven, eight, nine]")


def test_model_change_rebuilds_only_nodes_that_use_it(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    (digits_copy / "models.yml").write_text(TWO_MODELS)
    own_nodes(digits_copy)
    for name, function in (("by_a", "digits_predict"), ("by_b", "digits_b_predict")):
        (digits_copy / "sql" / f"{name}.sql").write_text(
            "{{ config(materialized='incremental', unique_key='path') }}\n"
            f"SELECT path, {function}(content).label AS pred FROM {{{{ source('digits_images') }}}}\n"
            "WHERE split = 'test'\n")
    assert Project.load(digits_copy).build(spark).success

    (digits_copy / "models.yml").write_text(TWO_MODELS.replace("[zero, one,", "[null_, one,"))
    result = {n.name: n for n in Project.load(digits_copy).build(spark).nodes}
    assert result["by_b"].action == "full refresh"
    assert "digits_b_predict changed" in result["by_b"].message
    assert (result["by_b"].rows, result["by_b"].rows_scored) == (450, 450)
    assert result["by_a"].action == "appended"
    assert (result["by_a"].rows, result["by_a"].rows_scored) == (0, 0)
    labels = {r.pred for r in spark.table(f"{database}.by_b").collect()}
    assert "null_" in labels and "zero" not in labels


GOOD_NODE = ("{{ config(materialized='table') }}\nSELECT path, label FROM {{ source('digits_images') }}\n"
             "WHERE split = 'test'\n")


@pytest.fixture()
def built_small(spark, digits_copy: Path) -> tuple[Path, str]:
    database = own_database(digits_copy)
    own_nodes(digits_copy)
    (digits_copy / "sql" / "base.sql").write_text(GOOD_NODE)
    (digits_copy / "sql" / "scored.sql").write_text(
        "{{ config(materialized='table') }}\nSELECT path, digits_predict(content).index AS pred\n"
        "FROM {{ source('digits_images') }} WHERE label = 0\n")
    assert Project.load(digits_copy).build(spark).success
    return digits_copy, database


@pytest.mark.parametrize(("file", "text", "code", "line"), [
    ("scored.sql", "SELECT * FROM {{ ref('loop') }}\n", "dag.cycle", 1),
    ("scored.sql", "-- a comment\nSELECT * FROM {{ ref('nope') }}\n", "sql.unknown_ref", 2),
    ("scored.sql", "SELECT *\n\nFROM {{ source('nope') }}\n", "sql.unknown_source", 3),
    ("scored.sql", "{{ config(materialized='table') }}\nSELECT path,\n  nosuch_predict(content)\n"
                   "FROM {{ source('digits_images') }}\n", "sql.analysis", 3),
    ("scored.sql", "SELECT 1\n{% if x %}\n", "sql.jinja_syntax", 2),
    ("scored.sql", "{{ config(materialized='table') }}\nSELECT path\nFROM {{ ref('base') }}\nWHERE label = = 1\n",
     "sql.syntax", 4),
])
def test_errors_name_file_and_line_and_change_no_table(spark, built_small: tuple[Path, str], file: str,
                                                       text: str, code: str, line: int) -> None:
    root, database = built_small
    before = {t: rows(spark, f"{database}.{t}") for t in ("base", "scored")}
    # `base` changes too: a build that went ahead would rebuild it with other rows.
    (root / "sql" / "base.sql").write_text(GOOD_NODE.replace("'test'", "'train'"))
    (root / "sql" / "loop.sql").write_text("SELECT * FROM {{ ref('scored') }}\n")
    (root / "sql" / file).write_text(text)
    with pytest.raises(SqlinferError) as info:
        Project.load(root).build(spark)
    error = info.value
    assert error.code == code, str(error)
    assert error.path == str(root / "sql" / file)
    assert error.line == line, str(error)
    assert {t: rows(spark, f"{database}.{t}") for t in ("base", "scored")} == before


def test_failing_node_skips_descendants_and_reports_file(spark, built_small: tuple[Path, str]) -> None:
    root, database = built_small
    # Fails only at run time (a division by zero in ANSI mode), after the analyzer passed it.
    (root / "sql" / "base.sql").write_text(
        "{{ config(materialized='table') }}\n"
        "SELECT path, 1 / (label - label) AS boom FROM {{ source('digits_images') }}\n")
    (root / "sql" / "after.sql").write_text("{{ config(materialized='table') }}\nSELECT * FROM {{ ref('base') }}\n")
    before = rows(spark, f"{database}.base")
    result = {n.name: n for n in Project.load(root).build(spark).nodes}
    assert result["base"].status == "error"
    assert str(root / "sql" / "base.sql") in result["base"].message
    assert result["after"].status == "skipped" and "'base'" in result["after"].message
    assert result["scored"].status == "success"
    assert rows(spark, f"{database}.base") == before  # the old table is still there, whole


def test_hostile_var_selects_exactly_what_it_says(spark, tmp_path: Path) -> None:
    values = ["x' OR '1'='1", "ends with \\", "plain", "x", "1"]
    root = tmp_path / "quoting"
    (root / "sql").mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"name": values}), root / "names.parquet")
    (root / "models.yml").write_text("models: []\n")
    (root / "sqlinfer_project.yml").write_text(textwrap.dedent("""\
        name: quoting
        sources:
          names: {format: parquet, path: names.parquet}
        """))
    database = own_database(root)
    (root / "sql" / "picked.sql").write_text(
        "{{ config(materialized='table') }}\nSELECT name FROM {{ source('names') }} WHERE name = {{ var('name') }}\n")
    (root / "sql" / "everything.sql").write_text(
        "{{ config(materialized='table') }}\nSELECT name FROM {{ source('names') }}\n")
    for value in values[:2]:
        assert Project.load(root, {"name": value}).build(spark).success
        assert [r.name for r in spark.table(f"{database}.picked").collect()] == [value]
        assert sorted(r.name for r in spark.table(f"{database}.everything").collect()) == sorted(values)


def test_compile_writes_sql_and_checks_it_without_running_models(spark, digits_copy: Path) -> None:
    own_database(digits_copy)
    project = Project.load(digits_copy)
    project.register(spark, views=False)
    manifest = project.compile(spark)
    assert set(manifest.nodes) == {"digit_predictions", "accuracy", "confusion_matrix",
                                   "digit_predictions_incremental"}
    compiled = (project.target / "compiled" / "accuracy.sql").read_text()
    assert "WHERE split = 'test'" in compiled
    assert sum(s.totals().get("rows", 0) for s in project.stats.values()) == 0

    (digits_copy / "sql" / "accuracy.sql").write_text(
        (digits_copy / "sql" / "accuracy.sql").read_text().replace("GROUP BY split", "GROUP BY splitt"))
    with pytest.raises(SqlinferError) as info:
        Project.load(digits_copy).compile(spark)
    assert info.value.path == str(digits_copy / "sql" / "accuracy.sql")
    assert info.value.line == 7
    assert "splitt" in info.value.message


def test_init_project_builds_out_of_the_box(spark, tmp_path: Path) -> None:
    from sqlinfer.build.scaffold import create_project

    root = create_project("fresh", tmp_path / "fresh")
    database = own_database(root)
    project = Project.load(root)
    result = project.build(spark)
    assert result.success, [n.message for n in result.nodes]
    top3 = spark.table(f"{database}.predictions").collect()
    assert len(top3) == 8 and all(len(r.top3) == 3 for r in top3)
    assert spark.table("best_labels").count() == 8
    with pytest.raises(SqlinferError) as info:
        create_project("fresh", root)
    assert info.value.code == "cli.exists"


def test_a_running_node_reports_its_tasks_and_rows_as_it_goes(spark, digits_copy: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlinfer/build/progress.py: a line every EVERY_S seconds while a node runs (30 s by default;
    0.2 s here, so that the digits table's second or two shows some), between its START and OK lines."""
    monkeypatch.setattr("sqlinfer.build.progress.EVERY_S", 0.2)
    lines: list[str] = []
    result = Project.load(digits_copy).build(spark, select=("digit_predictions",), report=lines.append)
    (node,) = result.nodes
    assert node.status == "success", node.message
    start = lines.index("[1/1] START table digit_predictions")
    end = next(i for i, line in enumerate(lines) if line.startswith("[1/1] OK    table digit_predictions"))
    progress = lines[start + 1:end]
    assert progress, lines
    pattern = re.compile(r"      digit_predictions: (?:starting|(\d+) of (\d+) tasks done)"
                         r"(?:, ([\d,]+) rows scored)?, (\d+) s")
    seen = [pattern.fullmatch(line) for line in progress]
    assert all(seen), progress
    for match in seen:
        assert match is not None
        done, total, scored, _seconds = match.groups()
        if total is not None:
            assert 0 <= int(done) <= int(total)
        if scored is not None:
            assert 0 < int(scored.replace(",", "")) <= 1797
    elapsed = [int(match.group(4)) for match in seen if match]
    assert elapsed == sorted(elapsed)
    assert not any(line.startswith("      digit_predictions:") for line in lines[end:])  # it stopped with the node
