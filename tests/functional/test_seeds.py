"""Seeds (dbt's): CSV files of the project's seeds/ folder loaded into tables by `sqlinfer seed`
and by build, usable with ref(), with real Spark and a real metastore."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import SQLINFER, docs_example, own_database

from sqlinfer import Project
from sqlinfer.errors import TemplateError

pytestmark = pytest.mark.spark

NAMES = "digit,name\n" + "".join(f"{d},{n}\n" for d, n in enumerate(
    "zero one two three four five six seven eight nine".split()))


def test_seeds_load_as_tables_that_nodes_ref(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    (digits_copy / "seeds").mkdir()
    (digits_copy / "seeds" / "digit_names.csv").write_text(NAMES)
    # docs/projects.md's example, with the label for the accuracy check below.
    example = docs_example("docs/projects.md", "JOIN {{ ref('digit_names') }} AS n")
    (digits_copy / "sql" / "named.sql").write_text("{{ config(materialized='view') }}\n"
                                                   + example.replace("SELECT p.path,", "SELECT p.path, p.label,"))

    (seeded,) = Project.load(digits_copy).seed(spark).nodes
    assert (seeded.name, seeded.materialized, seeded.status, seeded.action, seeded.rows) == (
        "digit_names", "seed", "success", "created", 10)
    table = spark.table(f"{database}.digit_names")
    assert [(f.name, f.dataType.simpleString()) for f in table.schema.fields] == [("digit", "int"), ("name", "string")]
    assert sorted(tuple(r) for r in table.collect())[:2] == [(0, "zero"), (1, "one")]

    result = Project.load(digits_copy).build(spark, select=("+named",))
    assert result.success and sorted(n.name for n in result.nodes[:2]) == ["digit_names", "digit_predictions"]
    assert result.nodes[2].name == "named"  # after both (dependency order)
    named = spark.sql("SELECT label, name FROM named").collect()
    assert len(named) == 1797
    words = NAMES.splitlines()[1:]
    assert sum(r.name == words[r.label].split(",")[1] for r in named) / len(named) >= 0.95  # the CNN is right

    # Edited and seeded again: the table is swapped for the new rows.
    (digits_copy / "seeds" / "digit_names.csv").write_text(NAMES.replace("0,zero", "0,nought"))
    (again,) = Project.load(digits_copy).seed(spark).nodes
    assert (again.action, again.rows) == ("rebuilt", 10)
    assert spark.sql(f"SELECT name FROM {database}.digit_names WHERE digit = 0").first().name == "nought"


def test_the_seed_command_on_a_project_of_its_own(tmp_path: Path) -> None:
    root = tmp_path / "seeded"
    (root / "seeds").mkdir(parents=True)
    (root / "sqlinfer_project.yml").write_text("name: seeded\nmodels: []\n")
    (root / "seeds" / "digit_names.csv").write_text(NAMES)
    done = subprocess.run([SQLINFER, "seed", str(root), "--conf", "spark.ui.enabled=false"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[1/1] START seed digit_names"
    assert lines[1].startswith("[1/1] OK    seed digit_names created, 10 rows in ")
    assert lines[-1].startswith("Done in ") and lines[-1].endswith(": 1 ok, 0 error, 0 skipped.")


def test_a_seed_named_like_a_node_is_refused(digits_copy: Path) -> None:
    (digits_copy / "seeds").mkdir()
    (digits_copy / "seeds" / "accuracy.csv").write_text("a\n1\n")
    with pytest.raises(TemplateError) as info:
        Project.load(digits_copy).nodes().load()
    assert info.value.code == "sql.name_clash"
    assert info.value.path == str(digits_copy / "seeds" / "accuracy.csv")
    assert "seed 'accuracy' has the name of" in info.value.message
