"""Starting the driver JVM before PySpark is imported, and connecting PySpark to it afterwards.

PySpark starts its JVM inside its own import-heavy code (``launch_gateway``: ``spark-submit``
with every setting a ``--conf``, then a wait for the JVM to write its gateway's port and secret
to a file). Importing PySpark takes 0.25-0.4 s of one core, with the command's other thread
(resolving the models) on the same interpreter lock, while the machine's other cores idle. Here the
JVM is launched the same way, from the settings alone, before that import, so the two overlap;
:meth:`LaunchedJvm.connect` then builds PySpark's gateway to it, as ``launch_gateway`` does.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from sqlinfer.errors import SessionError


def spark_home() -> Path:
    """The Spark installation spark-submit comes from: ``SPARK_HOME``, else the pyspark package
    (found without importing it)."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise SessionError("pyspark is not installed in this Python: pip install sqlinfer", code="session.jvm_failed")
    return Path(list(spec.submodule_search_locations)[0])


class LaunchedJvm:
    """A driver JVM started with ``settings`` (each a ``--conf``), its stderr going to ``stderr``."""

    def __init__(self, settings: dict[str, str], stderr: IO[bytes]) -> None:
        command = [str(spark_home() / "bin" / "spark-submit")]
        for key, value in settings.items():
            command += ["--conf", f"{key}={value}"]
        command += shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", "pyspark-shell"))
        self._folder = Path(tempfile.mkdtemp(prefix="sqlinfer-gateway-"))  # private (0700)
        self._info = self._folder / "gateway"  # the JVM writes its port and secret here
        env = {**os.environ, "SPARK_CONNECT_MODE": "0", "_PYSPARK_DRIVER_CONN_INFO_PATH": str(self._info)}
        try:
            # stdin a pipe: the JVM exits when it closes (sqlinfer.runtime.jvm.end_jvm). Ctrl-C is
            # this process's to handle, not the JVM's.
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=stderr, env=env,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        except OSError as exc:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise SessionError(f"the Spark JVM did not start: {exc}", code="session.jvm_failed") from None

    def connect(self) -> Any:
        """PySpark's gateway to this JVM (a py4j ClientServer, with the classes PySpark imports),
        once the JVM has written its address: polled every 10 ms, not PySpark's 100."""
        from py4j.clientserver import ClientServer, JavaParameters, PythonParameters
        from py4j.java_gateway import GatewayParameters, JavaGateway, java_import

        try:
            while self.proc.poll() is None and not self._info.is_file():
                time.sleep(0.01)
            if not self._info.is_file():
                raise SessionError("the Spark JVM did not start: is Java 17 or later installed (java on PATH, "
                                   "or JAVA_HOME)?", code="session.jvm_failed")
            data = self._info.read_bytes()  # written whole: the JVM renames it into place
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)
        # The format PySpark reads: the port (4-byte int), then the secret (4-byte length, UTF-8).
        port, length = struct.unpack(">ii", data[:8])
        secret = data[8:8 + length].decode()
        gateway: Any
        if os.environ.get("PYSPARK_PIN_THREAD", "true").lower() == "true":  # PySpark's default and switch
            gateway = ClientServer(java_parameters=JavaParameters(port=port, auth_token=secret, auto_convert=True),
                                   python_parameters=PythonParameters(port=0, eager_load=False))
        else:
            gateway = JavaGateway(gateway_parameters=GatewayParameters(port=port, auth_token=secret,
                                                                       auto_convert=True))
        gateway.proc = self.proc  # where sqlinfer.runtime.jvm finds the JVM to end it, as with PySpark's
        for name in ("org.apache.spark.SparkConf", "org.apache.spark.api.java.*", "org.apache.spark.api.python.*",
                     "org.apache.spark.ml.python.*", "org.apache.spark.mllib.api.python.*",
                     "org.apache.spark.resource.*", "org.apache.spark.sql.Encoders",
                     "org.apache.spark.sql.OnSuccessCall", "org.apache.spark.sql.functions",
                     "org.apache.spark.sql.classic.*", "org.apache.spark.sql.api.python.*",
                     "org.apache.spark.sql.hive.*", "scala.Tuple2"):
            java_import(gateway.jvm, name)
        return gateway
