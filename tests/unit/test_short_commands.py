"""What makes `sqlinfer sql` and `compile` start faster, without Spark: which queries call a model
(only those warm up Python workers), the order in which settings win, and the --timings lines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sqlinfer import Project
from sqlinfer.runtime import timeline
from sqlinfer.runtime.settings import WARM_UP_WORKERS

MODEL_VIEW = "SELECT path, digits_predict(content).label AS predicted FROM {{ source('digits_images') }}\n"
PLAIN_VIEW = "SELECT path FROM {{ source('digits_images') }}\n"


@pytest.mark.parametrize(("query", "calls"), [
    ("SELECT 1", False),
    ("SELECT count(*) FROM digits_images", False),
    ("SELECT * FROM accuracy", False),  # a view over a table: the model ran when the table was built
    ("SELECT digits_predict(content).label FROM digits_images", True),
    ("select DIGITS_SCORES(content) from digits_images", True),
    ("SELECT digits_predict_checked(content) FROM digits_images", True),
    ("SELECT * FROM on_the_fly", True),  # a view node that calls the model
    ("SELECT * FROM over_on_the_fly", True),  # a view reading that view
    ("SELECT * FROM plain_view", False),
    ("SHOW TABLES", False),
])
def test_a_query_calls_models_by_name_or_through_the_views_it_reads(digits_models: Path, query: str,
                                                                    calls: bool) -> None:
    sql = digits_models / "sql"
    (sql / "on_the_fly.sql").write_text(MODEL_VIEW)
    (sql / "over_on_the_fly.sql").write_text("SELECT count(*) AS n FROM {{ ref('on_the_fly') }}\n")
    (sql / "plain_view.sql").write_text(PLAIN_VIEW)
    assert Project.load(digits_models).calls_models(query) is calls


def test_a_project_that_cannot_render_is_assumed_to_call_models(digits_models: Path) -> None:
    (digits_models / "sql" / "broken.sql").write_text("SELECT {{ ref('missing') }}\n")
    assert Project.load(digits_models).calls_models("SELECT * FROM broken") is True


def test_the_project_file_and_conf_win_over_a_commands_defaults(digits_models: Path) -> None:
    project_file = digits_models / "sqlinfer_project.yml"
    project_file.write_text(project_file.read_text() + "spark:\n  spark.ui.enabled: true\n")
    settings = Project.load(digits_models).spark_conf({"spark.sql.shuffle.partitions": "4"}, short=True)
    assert settings == {"spark.ui.enabled": True, WARM_UP_WORKERS: "false", "spark.sql.shuffle.partitions": "4"}
    assert Project.load(digits_models).spark_conf({WARM_UP_WORKERS: "true"}, short=True)[WARM_UP_WORKERS] == "true"
    assert Project.load(digits_models).spark_conf({}) == {"spark.ui.enabled": True}


def test_the_timeline_lists_moments_in_order_with_their_gaps() -> None:
    start = timeline.process_start()
    timeline.mark("first")
    timeline.mark("second")
    first, second = timeline.lines(start)[-2:]
    assert first.endswith("  first") and second.endswith("  second")
    at_first, at_second = (float(line.split(" s ")[0]) for line in (first, second))
    assert 0 <= at_first <= at_second <= time.time() - start + 0.01  # seconds since this process started
    assert float(second.split("(+")[1].split(")")[0]) == pytest.approx(at_second - at_first, abs=0.011)
