"""The metastore opened in the background (sqlinfer/runtime/warm_up.py) with a real JVM and a new
embedded metastore: what needs no metastore (a source's temporary view) does not wait for it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark

# A session on a new project folder (Derby creates the metastore's schema: seconds), the metastore
# opened in the background as the commands do ("as built") or through the session's catalog (the
# way sqlinfer did it before), then a temporary view made and looked up at once.
SESSION = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    from sqlinfer.runtime.session import build_session
    from sqlinfer.runtime.warm_up import warm_up_catalog

    spark = build_session(Path(sys.argv[1]), "local[1]", {"spark.sqlinfer.warmUpWorkers": "false",
                                                          "spark.ui.enabled": "false"})
    if sys.argv[2] == "as built":
        thread = warm_up_catalog(spark)
    else:
        thread = threading.Thread(target=lambda: spark.catalog.databaseExists("default"))
        thread.start()
    time.sleep(0.2)  # the metastore is opening (a new schema: seconds)
    spark.range(3).createOrReplaceTempView("numbers")
    columns = spark.table("numbers").columns
    view_ready = time.monotonic()
    thread.join()
    opened = time.monotonic()
    print(json.dumps({"columns": columns, "view_waited_for_metastore": opened - view_ready < 0.05,
                      "seconds_before_open": round(opened - view_ready, 2)}))
""")


def test_a_temporary_view_does_not_wait_for_the_metastore_to_open(tmp_path: Path) -> None:
    runs = {}
    for mode in ("as built", "through the catalog"):
        target = tmp_path / mode.replace(" ", "_")
        target.mkdir()
        runs[mode] = subprocess.run([sys.executable, "-c", SESSION, str(target), mode], capture_output=True,
                                    text=True, timeout=300)
    reports = {}
    for mode, run in runs.items():
        assert run.returncode == 0, run.stderr[-3000:]
        reports[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    assert reports["as built"]["columns"] == reports["through the catalog"]["columns"] == ["id"]
    # Opened through the catalog, the view waits on the catalog's lock until the metastore is open.
    assert reports["through the catalog"]["view_waited_for_metastore"] is True, reports
    assert reports["as built"]["view_waited_for_metastore"] is False, reports
