"""A SQL file becoming a table: project file -> templating -> manifest and dag -> runner ->
materialize. Nothing here starts Spark; the runner and materializations run on a session they
are given."""
