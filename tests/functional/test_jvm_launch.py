"""The driver JVM launched before PySpark is imported (sqlinfer/runtime/jvm_launch.py), with a real
JVM: it is already starting when the import begins, and the session it serves works."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark

SESSION = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import psutil

    seen = {}

    class FirstImportOfPySpark:  # notes this process's children when PySpark's import begins
        def find_spec(self, name, path=None, target=None):
            # Its first submodule: `pyspark` itself is also looked up, not imported, to find Spark's home.
            if name.startswith("pyspark.") and "children" not in seen:
                seen["children"] = [" ".join(child.cmdline()) for child in psutil.Process().children(recursive=True)]
            return None

    sys.meta_path.insert(0, FirstImportOfPySpark())
    from sqlinfer.runtime.session import build_session

    spark = build_session(Path(sys.argv[1]), "local[1]", {"spark.sqlinfer.warmUpWorkers": "false",
                                                          "spark.ui.enabled": "false"})
    launched = [c for c in seen["children"] if "spark-submit" in c or "SparkSubmit" in c]
    print(json.dumps({"launched_before_import": len(launched),
                      "sum": spark.range(5).selectExpr("sum(id)").first()[0],
                      "jvm": spark.sparkContext._gateway.proc.pid in [p.pid for p in psutil.Process().children()]}))
""")


def test_the_jvm_starts_before_pyspark_is_imported(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SESSION, str(tmp_path / "target")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"launched_before_import": 1, "sum": 10, "jvm": True}
