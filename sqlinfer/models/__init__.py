"""A declaration in models.yml becoming a Spark SQL function, driver side: declaration ->
resolve (weights, defaults, check, fingerprint) -> udf (broadcast, register). No module here
imports Spark at import time; :mod:`sqlinfer.worker` imports this package, never the reverse."""
