"""Files the package points the JVM at exist where the settings say (they moved once unnoticed)."""

from __future__ import annotations

import re
from pathlib import Path

from sqlinfer.runtime.settings import session_conf


def test_log_config_in_the_driver_options_exists(tmp_path: Path) -> None:
    options = session_conf(tmp_path, None, {})["spark.driver.extraJavaOptions"]
    match = re.search(r"-Dlog4j2\.configurationFile=(\S+)", options)
    assert match is not None, options
    path = Path(match.group(1))
    assert path.is_file(), path
    assert "rootLogger" in path.read_text()
