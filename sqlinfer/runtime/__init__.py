"""The Spark side of every command: the session and its settings, the JVM's start (class archive)
and end, the Python worker daemon, the embedded metastore, Spark's errors in sqlinfer's terms."""
