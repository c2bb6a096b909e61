"""How each materialization turns a node's SELECT into a relation, without losing data.

- ``view``: a temporary view, created again in every session of the project (it may call model
  functions and read sources, which are session objects too).
- ``table``: the new data is written completely into a staging table, then names are swapped; the
  old table is dropped only after the new one has its name. A build killed at any point leaves the
  old table, or the new one, complete under the node's name; the next build finishes or undoes an
  interrupted swap and removes leftover staging data first.
- ``incremental``: the first build writes everything; later builds append only rows whose
  ``unique_key`` is not in the table yet, de-duplicated by key. The runner renders the node for
  this with every keyed input filtered by ``NOT EXISTS`` against the table, so old rows never
  reach a model function (Spark does not push an anti join on the result below a Python UDF);
  the anti join here only guards the append against keys the filter could not see. A changed
  model fingerprint (recorded in the table's properties) or ``--full-refresh`` rebuilds it like
  a table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlinfer.build.manifest import Node
from sqlinfer.build.templating import literal

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

STAGING = "__sqlinfer_new"
BACKUP = "__sqlinfer_old"
MODELS_PROPERTY = "sqlinfer.models"  # JSON {function name: model fingerprint}
BUILT_BY_PROPERTY = "sqlinfer.node"


@dataclass
class Outcome:
    """What one materialization did."""

    rows: int | None  # rows written (appended, for an incremental build); None for views
    action: str  # created view | rebuilt | created | appended | full refresh
    note: str = ""


class Materializer:
    """The materializations of one database on one session."""

    def __init__(self, spark: SparkSession, database: str) -> None:
        self.spark = spark
        self.database = database

    # -- names and catalog helpers ---------------------------------------------------------------
    def qualified(self, name: str) -> str:
        return f"`{self.database}`.`{name}`"

    def exists(self, name: str) -> bool:
        return self.spark.catalog.tableExists(f"{self.database}.{name}")

    def models_recorded(self, name: str) -> dict[str, str] | None:
        """The model fingerprints recorded with a built table (None: no such table or none recorded)."""
        if not self.exists(name):
            return None
        rows = self.spark.sql(f"SHOW TBLPROPERTIES {self.qualified(name)}").collect()
        properties = {row[0]: row[1] for row in rows}
        recorded = properties.get(MODELS_PROPERTY)
        return json.loads(recorded) if recorded else {}

    def _drop_with_data(self, name: str) -> None:
        """Drop a staging/backup table, and its folder even when the metastore lost track of it."""
        self.spark.sql(f"DROP TABLE IF EXISTS {self.qualified(name)}")
        location = self._default_location(name)
        jvm = self.spark._jvm  # Hadoop's file system has no Python API
        assert jvm is not None
        path = jvm.org.apache.hadoop.fs.Path(location)
        fs = path.getFileSystem(self.spark._jsc.hadoopConfiguration())
        if fs.exists(path):
            fs.delete(path, True)

    def _default_location(self, name: str) -> str:
        database_uri = self.spark.catalog.getDatabase(self.database).locationUri
        return f"{database_uri.rstrip('/')}/{name.lower()}"

    def recover(self, name: str) -> str | None:
        """Finish or undo a swap a killed build left behind; remove leftover staging data."""
        note = None
        if not self.exists(name) and self.exists(name + BACKUP):
            # Killed between the two renames: the old table is complete under the backup name.
            self.spark.sql(f"ALTER TABLE {self.qualified(name + BACKUP)} RENAME TO {self.qualified(name)}")
            note = "restored the previous table after an interrupted build"
        self._drop_with_data(name + STAGING)
        self._drop_with_data(name + BACKUP)
        return note

    # -- materializations ---------------------------------------------------------------------------
    def view(self, node: Node) -> Outcome:
        self.spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW `{node.name}` AS {node.sql}")
        return Outcome(None, "created view")

    def views(self, nodes: list[Node]) -> list[str]:
        """Create the view nodes among ``nodes`` (in order); returns why each failed one failed.

        View nodes are session objects: every session of a project creates them again. One that
        fails (typically over a table not built yet) must not stop the others.
        """
        from sqlinfer.runtime.spark_errors import first_line

        problems = []
        for node in nodes:
            if node.config.materialized == "view":
                try:
                    self.view(node)
                except Exception as exc:  # any Spark error: reported, the other views still made
                    problems.append(f"view {node.name!r} not created ({node.path.name}): {first_line(str(exc))}")
        return problems

    def _create_table_as(self, name: str, node: Node, frame_sql: str, models: dict[str, str]) -> None:
        cfg = node.config
        partition = f"PARTITIONED BY ({', '.join(f'`{c}`' for c in cfg.partition_by)}) " if cfg.partition_by else ""
        properties = {MODELS_PROPERTY: json.dumps(models, sort_keys=True), BUILT_BY_PROPERTY: node.name}
        props = ", ".join(f"{literal(k)} = {literal(v)}" for k, v in properties.items())
        # The SELECT goes after "AS " on the same line, so Spark's line numbers are the file's.
        self.spark.sql(f"CREATE TABLE {self.qualified(name)} USING {cfg.file_format} {partition}"
                       f"TBLPROPERTIES ({props}) AS {frame_sql}")

    def table(self, node: Node, models: dict[str, str]) -> Outcome:
        note = self.recover(node.name)
        existed = self.exists(node.name)
        self._create_table_as(node.name + STAGING, node, node.sql, models)
        rows = self.spark.table(self.qualified(node.name + STAGING)).count()
        self._swap(node.name)
        return Outcome(rows, "rebuilt" if existed else "created", note or "")

    def _swap(self, name: str) -> None:
        staging, backup, target = (self.qualified(name + STAGING), self.qualified(name + BACKUP),
                                   self.qualified(name))
        if self.exists(name):
            self.spark.sql(f"ALTER TABLE {target} RENAME TO {backup}")
        self.spark.sql(f"ALTER TABLE {staging} RENAME TO {target}")
        self._drop_with_data(name + BACKUP)

    def incremental(self, node: Node, incremental_sql: str, models: dict[str, str], rebuild: bool,
                    reason: str) -> Outcome:
        """Append the new rows of ``incremental_sql``; with ``rebuild`` (``reason`` says why:
        --full-refresh, a changed model) or without a table yet, build it whole like a table."""
        key = node.config.unique_key
        assert key is not None
        note = self.recover(node.name)
        if rebuild or not self.exists(node.name):
            frame = self.spark.sql(node.sql).dropDuplicates([key])
            frame.createOrReplaceTempView("__sqlinfer_full")
            self._create_table_as(node.name + STAGING, node, "SELECT * FROM __sqlinfer_full", models)
            rows = self.spark.table(self.qualified(node.name + STAGING)).count()
            self._swap(node.name)
            action = "full refresh" if rebuild and reason else "created"
            return Outcome(rows, action, "; ".join(x for x in (note, reason) if x))
        new_rows = self._new_rows(node, incremental_sql, key)
        before = self.spark.table(self.qualified(node.name)).count()
        new_rows.write.insertInto(f"{self.database}.{node.name}")
        rows = self.spark.table(self.qualified(node.name)).count() - before
        return Outcome(rows, "appended", note or "")

    def _new_rows(self, node: Node, sql: str, key: str) -> DataFrame:
        target = self.spark.table(self.qualified(node.name))
        fresh = self.spark.sql(sql)
        columns = target.columns
        # The SQL already reads only new keys where its inputs have the key column (see the module
        # docstring); this anti join keeps keys out that came from inputs without it.
        return (fresh.join(target.select(key), on=key, how="left_anti")
                .dropDuplicates([key]).select(*columns))
