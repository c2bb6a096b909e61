#!/bin/sh
# Builds sqlinfer-spark.jar, sqlinfer's Spark SQL extensions, from the .java files here:
#   SqlGuard.java      the SQL guard of `sqlinfer serve` and `sqlinfer sql --safe`;
#   HiveFunctions.java the server's guard against Hive's function registry;
#   PlainFloats.java   Parquet float columns written without a dictionary (every sqlinfer session).
# Offline: javac against the jars of the installed pyspark, with the JDK that runs Spark (17 or later).
# Run it after changing a .java file or upgrading pyspark:
#   sqlinfer/resources/build_jar.sh [PYTHON]      (default: the python3 on PATH)
# tests/functional/test_serve_guard.py builds it again and compares the classes with the shipped jar.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-python3}
out=${SQLINFER_JAR:-$here/sqlinfer-spark.jar}
jars=$("$python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
javac --release 17 -Xlint:deprecation -cp "$jars/*" -d "$work/classes" "$here"/*.java
# A fixed date and no manifest timestamps: the same source gives the same jar.
jar --create --no-manifest --date=2024-01-01T00:00:00Z --file "$work/sqlinfer.jar" -C "$work/classes" .
mv "$work/sqlinfer.jar" "$out"
