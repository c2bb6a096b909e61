"""The executor side of a model function: what runs in Spark's Python workers. No Spark imports,
so it also runs on a GPU box without a JVM."""
