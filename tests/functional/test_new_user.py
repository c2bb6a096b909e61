"""What a new user tripped on (issue 14, point 6), with real Spark: sources registered only for
the nodes a build needs, a glob that matches nothing (a warning; `required: true` makes it an
error), tables left by deleted nodes (a warning; `--prune` drops them), rows scored counted per
model function, `sqlinfer debug`, and the incremental node of `sqlinfer init`'s template."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import SQLINFER, digits_declaration, own_database, own_nodes, png_bytes

from sqlinfer import Project, SqlinferError

pytestmark = pytest.mark.spark

TWO_FUNCTIONS = "models:\n" + digits_declaration("digits") + digits_declaration("digits_b")


def _add_source(root: Path, text: str) -> None:
    project_file = root / "sqlinfer_project.yml"
    project_file.write_text(project_file.read_text().replace("sources:\n", f"sources:\n{text}", 1))


def _line(path: Path, text: str) -> int:
    return path.read_text().splitlines().index(text) + 1


def test_a_source_that_no_built_node_reads_does_not_block_the_build(spark, digits_copy: Path) -> None:
    own_database(digits_copy)
    _add_source(digits_copy, "  scans:\n    format: binaryFile\n    path: data/not_there_yet\n")
    (digits_copy / "sql" / "scan_predictions.sql").write_text(
        "{{ config(materialized='table') }}\n"
        "SELECT path, digits_predict(content) AS pred FROM {{ source('scans') }}\n")
    result = Project.load(digits_copy).build(spark, select=("digit_predictions",))
    assert [(n.name, n.status, n.rows) for n in result.nodes] == [("digit_predictions", "success", 1797)]

    with pytest.raises(SqlinferError) as info:  # the node that reads it does need it
        Project.load(digits_copy).build(spark, select=("scan_predictions",))
    assert info.value.code == "source.unreadable"
    assert "source 'scans' cannot be read: [PATH_NOT_FOUND]" in info.value.message
    assert info.value.line == _line(digits_copy / "sqlinfer_project.yml", "  scans:")


def test_a_glob_that_matches_nothing_warns_and_required_makes_it_an_error(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    _add_source(digits_copy, '  photos:\n    format: binaryFile\n    path: data/images\n    glob: "*.jpg"\n'
                             "    recursive: true\n")
    own_nodes(digits_copy)
    (digits_copy / "sql" / "photo_predictions.sql").write_text(
        "{{ config(materialized='table') }}\n"
        "SELECT path, digits_predict(content) AS pred FROM {{ source('photos') }}\n")
    lines: list[str] = []
    result = Project.load(digits_copy).build(spark, report=lines.append)
    assert [(n.name, n.status, n.rows) for n in result.nodes] == [("photo_predictions", "success", 0)]
    line = _line(digits_copy / "sqlinfer_project.yml", "  photos:")
    assert f"WARNING {digits_copy / 'sqlinfer_project.yml'}:{line}: source 'photos' matches no file (data/images, " \
           "*.jpg): the nodes that read it get no rows" in lines
    assert spark.table(f"{database}.photo_predictions").count() == 0

    project_file = digits_copy / "sqlinfer_project.yml"
    project_file.write_text(project_file.read_text().replace("    recursive: true\n", "    recursive: true\n"
                                                                                      "    required: true\n", 1))
    with pytest.raises(SqlinferError) as info:
        Project.load(digits_copy).build(spark)
    assert (info.value.code, info.value.line) == ("source.empty", line)
    assert info.value.message == ("source 'photos' matches no file (data/images, *.jpg), and it is declared "
                                  "`required: true`")


def test_rows_scored_are_counted_per_model_function(spark, digits_copy: Path) -> None:
    own_database(digits_copy)
    (digits_copy / "models.yml").write_text(TWO_FUNCTIONS)
    own_nodes(digits_copy)
    (digits_copy / "sql" / "both.sql").write_text(
        "{{ config(materialized='table') }}\n"
        "SELECT path, digits_predict(content).label AS a, digits_b_predict_checked(content).result.label AS b\n"
        "FROM {{ source('digits_images') }} WHERE split = 'test'\n")
    lines: list[str] = []
    (node,) = Project.load(digits_copy).build(spark, report=lines.append).nodes
    assert node.status == "success", node.message
    assert (node.rows, node.rows_scored) == (450, 450)
    assert {f: (s.rows, s.bad) for f, s in node.scored_by.items()} == {"digits_b_predict": (450, 0),
                                                                        "digits_predict": (450, 0)}
    assert any("table both created, 450 rows, scored: digits_b_predict 450, digits_predict 450 in" in line
               for line in lines), lines


def test_a_deleted_nodes_table_is_reported_and_pruned_on_request(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    own_nodes(digits_copy)
    for name in ("kept", "old_name"):
        (digits_copy / "sql" / f"{name}.sql").write_text(
            "{{ config(materialized='table') }}\nSELECT path FROM {{ source('digits_images') }} WHERE label = 0\n")
    assert Project.load(digits_copy).build(spark).success
    spark.sql(f"CREATE TABLE `{database}`.`by_hand` USING parquet AS SELECT 1 AS x")  # not sqlinfer's: left alone
    (digits_copy / "sql" / "old_name.sql").rename(digits_copy / "sql" / "new_name.sql")

    lines: list[str] = []
    assert Project.load(digits_copy).build(spark, report=lines.append).success
    assert [line for line in lines if line.startswith(("WARNING", "PRUNE"))] == [
        f"WARNING `{database}`.`old_name` was built for a node 'old_name' that the project no longer has: "
        "`sqlinfer build --prune` drops it (or DROP TABLE it yourself)"]
    assert spark.table(f"{database}.old_name").count() == 178

    lines.clear()
    assert Project.load(digits_copy).build(spark, report=lines.append, prune=True).success
    assert [line for line in lines if line.startswith(("WARNING", "PRUNE"))] == [
        f"PRUNE `{database}`.`old_name`: dropped (no node 'old_name' any more)"]
    tables = sorted(t.name for t in spark.catalog.listTables(database) if not t.isTemporary)
    assert tables == ["by_hand", "kept", "new_name"]


def test_debug_reports_the_environment_the_project_and_a_held_metastore(spark, spark_target: Path,
                                                                        digits_copy: Path) -> None:
    def debug(root: Path) -> tuple[int, dict[str, tuple[str, str]], str]:
        """Exit code, {check: (status, detail)}, and the last line."""
        done = subprocess.run([SQLINFER, "debug", str(root)], capture_output=True, text=True, timeout=300)
        *lines, last = done.stdout.splitlines()
        return done.returncode, {name: (status, detail) for name, status, detail in
                                 (line.split(None, 2) for line in lines)}, last

    code, checks, last = debug(digits_copy)
    assert (code, last) == (0, "All checks passed."), checks
    assert list(checks) == ["python", "java", "pyspark", "torch", "cuda", "extras", "project", "metastore"]
    assert all(status == "ok" for status, _ in checks.values())
    assert checks["java"][1].startswith(('openjdk version "17', 'openjdk version "21'))
    assert checks["pyspark"][1] == __import__("pyspark").__version__
    assert checks["project"][1] == f"{digits_copy}: 2 model(s), 4 node(s), 1 source(s)"

    (digits_copy / "models.yml").write_text((digits_copy / "models.yml").read_text().replace(
        "weights: weights/digits_cnn.safetensors", "weights: weights/gone.safetensors"))
    code, checks, last = debug(digits_copy)
    assert (code, last) == (1, "1 problem(s): project")
    line = _line(digits_copy / "models.yml", "    weights: weights/gone.safetensors")
    assert checks["project"] == ("FAIL", f"{digits_copy / 'models.yml'}:{line}: model 'digits': weights file not "
                                         f"found: {digits_copy / 'weights' / 'gone.safetensors'} "
                                         "[config.missing_weights]")

    # A project whose target is this test session's own metastore, which the running JVM holds.
    spark.sql("SHOW DATABASES").collect()
    root = spark_target.parent
    (root / "sqlinfer_project.yml").write_text(f"name: held\ntarget: {spark_target.name}\n")
    (root / "models.yml").write_text("models: []\n")
    code, checks, last = debug(root)
    assert (code, last) == (1, "1 problem(s): metastore")
    assert checks["metastore"][0] == "FAIL"
    assert checks["metastore"][1].startswith(f"{spark_target / 'metastore_db'} is in use by pid ")


def test_the_init_template_scores_each_image_once(spark, tmp_path: Path) -> None:
    from sqlinfer.build.scaffold import create_project

    root = create_project("fresh", tmp_path / "fresh")
    own_database(root)
    first = {n.name: n for n in Project.load(root).build(spark).nodes}
    assert (first["predictions"].materialized, first["predictions"].rows_scored) == ("incremental", 8)
    again = {n.name: n for n in Project.load(root).build(spark).nodes}
    assert (again["predictions"].action, again["predictions"].rows, again["predictions"].rows_scored) == (
        "appended", 0, 0)
    (root / "data" / "images" / "new.png").write_bytes(png_bytes(7))
    third = {n.name: n for n in Project.load(root).build(spark).nodes}
    assert (third["predictions"].action, third["predictions"].rows, third["predictions"].rows_scored) == (
        "appended", 1, 1)


def test_sql_registers_only_what_the_query_names(spark, digits_copy: Path) -> None:
    """`sqlinfer sql` lists the files of the sources its query reads (directly or through view
    nodes) and no others: a source that cannot be read blocks only the queries that read it."""
    own_database(digits_copy)
    _add_source(digits_copy, "  scans:\n    format: binaryFile\n    path: data/not_there_yet\n")
    (digits_copy / "sql" / "test_images.sql").write_text(
        "{{ config(materialized='view') }}\nSELECT path FROM digits_images WHERE path LIKE '%/test/%'\n")
    for view in ("digits_images", "scans", "test_images"):
        spark.catalog.dropTempView(view)

    Project.load(digits_copy).register_for_query(spark, "SELECT 1")
    assert not any(spark.catalog.tableExists(view) for view in ("digits_images", "scans", "test_images"))

    project = Project.load(digits_copy)
    project.register_for_query(spark, "SELECT count(*) AS n FROM test_images")  # a view over a source
    assert spark.sql("SELECT count(*) AS n FROM test_images").first().n == 450
    assert not spark.catalog.tableExists("scans")

    with pytest.raises(SqlinferError) as info:
        Project.load(digits_copy).register_for_query(spark, "SELECT * FROM scans")
    assert info.value.code == "source.unreadable"
    with pytest.raises(SqlinferError):  # SHOW TABLES lists everything the project offers, so reads every source
        Project.load(digits_copy).register_for_query(spark, "SHOW TABLES")
