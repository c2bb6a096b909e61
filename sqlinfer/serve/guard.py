"""The SQL guard: a client of `sqlinfer serve` (or a query of `sqlinfer sql --safe`) stays inside SQL.

Spark SQL with Hive support can run shell commands (``SELECT TRANSFORM ... USING``), call Java
methods (``reflect``, ``java_method``), load code (``ADD JAR``, ``CREATE FUNCTION ... USING JAR``),
write anywhere the server's user can (``INSERT OVERWRITE DIRECTORY``, ``LOCATION``), and, because
every client shares the server's one session, change what the others see (``SET``, a temporary
view named like a source, ``DROP TEMPORARY FUNCTION`` of a model function). The guard refuses all of
that; ``serve: {allow: [...]}`` in the project file gives back what a trusted deployment wants
(the names: :data:`sqlinfer.build.config.GUARD_FEATURES`).

Where each refusal happens (a Thrift client talks to the JVM directly, so nothing Python-side sees
its statements):

- ``spark.sql.restrictedMode.enabled``, Spark's own switch (static: no client can turn it off),
  refuses ``reflect``/``java_method``/``try_reflect`` and ``TRANSFORM ... USING`` during analysis. It
  is on unless ``allow`` names one of them; the guard's rule then refuses the other.
- Everything else: a check rule (``spark.sql.extensions``) in ``resources/sqlinfer-spark.jar``, built
  from ``resources/SqlGuard.java`` by ``resources/build_jar.sh``. Its allow list is a SparkConf
  setting, which no client statement can change.
- A connection's own settings (``set:hiveconf:`` / ``set:hivevar:`` in a JDBC URL, PyHive's
  ``configuration``) are applied by the Thrift server through the session's ``conf.set`` before any
  statement: :func:`protect` with ``lock_settings`` makes that refuse them (the connection fails).

Two steps, because the first must happen before the session exists: :func:`guard_conf` (settings for
the new session), then :func:`protect` once the project's functions and views are registered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlinfer.build.config import ALLOW, GUARD_FEATURES
from sqlinfer.errors import BuildError, ServeError
from sqlinfer.runtime.settings import CLASS_PATH, EXTENSIONS, RESOURCES, SPARK_JAR, conf_text, join_setting

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from sqlinfer.project import Project

EXTENSION = "sqlinfer.guard.SqlGuard"
ALLOW_KEY = "spark.sqlinfer.guard.allow"  # SqlGuard.ALLOW_KEY
RESTRICTED_MODE = "spark.sql.restrictedMode.enabled"
# The start of every message of the guard's rule (SqlGuard.PREFIX), and of Spark's restricted mode.
GUARD_PREFIX = "sqlinfer SQL guard: "
RESTRICTED_ERROR = "UNSUPPORTED_FEATURE.SQL_RESTRICTED_MODE"


def allowed(project: Project) -> tuple[str, ...]:
    """The features the project file's ``serve: {allow: [...]}`` gives back (validated when loaded)."""
    names = project.config.serve.get(ALLOW, [])
    return tuple(names) if isinstance(names, list) else ()


def guard_conf(conf: Mapping[str, Any], allow: Iterable[str] = ()) -> dict[str, str]:
    """``conf`` (the user's Spark settings: the project's ``spark:`` and ``--conf``) plus what turns the
    guard on in a session built from it. Pass the result as the whole of the session's settings: the
    user's own ``spark.sql.extensions`` and ``spark.driver.extraClassPath`` are kept, ours added."""
    allow = set(allow)
    unknown = sorted(allow - set(GUARD_FEATURES))
    if unknown:
        raise ServeError(f"the SQL guard cannot allow {', '.join(unknown)}: use any of {', '.join(GUARD_FEATURES)}",
                         code="serve.bad_setting")
    if not SPARK_JAR.is_file():
        raise ServeError(f"the SQL guard's jar {SPARK_JAR} is missing: reinstall sqlinfer (or run "
                         f"{RESOURCES / 'build_jar.sh'})", code="serve.guard_unavailable")
    settings = {key: conf_text(value) for key, value in conf.items()}
    settings[EXTENSIONS] = join_setting(settings.get(EXTENSIONS, ""), EXTENSION, ",")
    settings[CLASS_PATH] = join_setting(settings.get(CLASS_PATH, ""), str(SPARK_JAR), os.pathsep)
    settings[ALLOW_KEY] = ",".join(sorted(allow))
    # Spark's switch covers both features at once: with either allowed, the guard's rule refuses the other.
    if not allow & {"reflect", "transform"}:
        settings[RESTRICTED_MODE] = "true"
    return settings


def protect(spark: SparkSession, project: Project, *, lock_settings: bool = False) -> None:
    """Arm the guard on ``spark`` (built from :func:`guard_conf`) once ``project`` is registered on it.

    The project's model functions and the temporary views that exist now (its sources and view
    nodes) can then no longer be dropped, replaced or shadowed. ``lock_settings`` (for a server, unless
    ``set`` is allowed) refuses settings sent with a connection.
    """
    from py4j.protocol import Py4JError

    jvm = spark._jvm  # the guard has no Python API
    assert jvm is not None
    if EXTENSION not in spark.conf.get(EXTENSIONS, "").split(","):
        raise ServeError("the SQL guard is not on in this session: it must be built with guard_conf(...) "
                         "(a session that was already running keeps its settings)", code="serve.guard_unavailable")
    functions = [model.plan.udf_name for model in project.resolve_models()]
    views = [table.name for table in spark.catalog.listTables() if table.isTemporary]
    gateway = spark.sparkContext._gateway
    assert gateway is not None
    try:
        guard = jvm.sqlinfer.guard.SqlGuard
        guard.protect(_strings(gateway, functions), _strings(gateway, views))
        if lock_settings and "set" not in allowed(project):
            guard.lockSettings(spark._jsparkSession)
    except Py4JError as exc:
        raise ServeError(f"the SQL guard could not be armed: {str(exc).splitlines()[0]}",
                         code="serve.guard_unavailable") from None


def refusal(exc: BaseException) -> BuildError | None:
    """A statement the guard (or Spark's restricted mode) refused, as one clear error; else None.
    For ``sqlinfer sql --safe``, which sees the refusal as a Spark exception."""
    text = str(exc)
    if GUARD_PREFIX in text:
        reason = re.sub(r"\s*SQLSTATE: \w+.*$", "", text.split(GUARD_PREFIX, 1)[1].splitlines()[0])
    elif RESTRICTED_ERROR in text:
        line = next(line for line in text.splitlines() if RESTRICTED_ERROR in line)
        feature = "transform" if "TRANSFORM" in line else "reflect"
        reason = (line.split("The feature is not supported: ", 1)[-1].split(" SQLSTATE")[0]
                  + f" (a trusted deployment can allow it: serve.allow: [{feature}])")
    else:
        return None
    return BuildError(f"refused by the SQL guard: {reason}", code="sql.refused")


def _strings(gateway: Any, items: list[str]) -> Any:
    array = gateway.new_array(gateway.jvm.java.lang.String, len(items))
    for index, item in enumerate(items):
        array[index] = item
    return array
