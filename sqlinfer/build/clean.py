"""`sqlinfer clean`: the files a command regenerates, removed from the project's target folder.

dbt's `clean` deletes `target/` whole; here `target/` also holds the embedded metastore and
warehouse, i.e. the tables a build made, so those are kept (deleting `target/` by hand removes
them too).
"""

from __future__ import annotations

import shutil
from pathlib import Path

# What commands write again when it is missing: compiled SQL, results, logs, the check cache and
# the weights files shipped to executors.
GENERATED = ("compiled", "logs", "weights", "run_results.json", "manifest.json", "resolved_models.json", "derby.log")
KEPT = ("metastore_db", "warehouse")


def remove_generated(target: Path) -> list[Path]:
    """Remove the generated files under ``target``; returns what was removed."""
    removed = []
    for name in GENERATED:
        path = target / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed
