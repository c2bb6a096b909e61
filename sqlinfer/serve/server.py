"""`sqlinfer serve`: a project's SparkSession behind Spark's Thrift JDBC/ODBC server (HiveServer2).

The server is started *inside* the session that registered the model UDFs and source views, in
single-session mode (set by :mod:`sqlinfer.runtime.settings`), so every client sees those functions and
views, and the tables in the project's metastore.

Why the server's ``hive.server2.*`` settings are JVM system properties, not session conf: the
server's own conf is read when a HiveConf is first built, and the password providers (LDAP, PAM,
CUSTOM) build a fresh ``new HiveConf()`` per login, which sees only hive-site.xml and system
properties. System properties also keep secrets (keystore passwords) out of the SQL ``SET`` output
and out of the JVM's command line. This is what ``start-thriftserver.sh --hiveconf`` does too.

Everything that can be checked without Spark (settings, unsafe binds, a busy port, a metastore
held by another process) is checked before the JVM starts, so mistakes fail in a second.

Clients stay inside SQL: the session is built with the SQL guard (:mod:`sqlinfer.serve.guard`), armed
once the project is registered and before the server accepts anyone.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.build.config import ALLOW
from sqlinfer.errors import ServeError
from sqlinfer.runtime.jvm import end_jvm, jvm_process
from sqlinfer.runtime.metastore import (
    DERBY_LOCKED,
    derby_folder,
    ensure_metastore_free,
    metastore_busy_error,
    metastore_holder,
)
from sqlinfer.runtime.settings import conf_text, session_conf
from sqlinfer.serve.guard import allowed, guard_conf, protect

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from sqlinfer.project import Project

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 10000
INSECURE_FLAG = "--insecure-no-auth"

AUTH = "hive.server2.authentication"
TRANSPORT = "hive.server2.transport.mode"
BIND_HOST = "hive.server2.thrift.bind.host"
BINARY_PORT = "hive.server2.thrift.port"
HTTP_PORT = "hive.server2.thrift.http.port"
HTTP_PATH = "hive.server2.thrift.http.path"
USE_SSL = "hive.server2.use.SSL"
KEYSTORE_PATH = "hive.server2.keystore.path"

AUTH_MODES = ("NONE", "NOSASL", "LDAP", "KERBEROS", "CUSTOM", "PAM")
# The modes in which the server checks who the client is; NONE and NOSASL accept anyone.
AUTHENTICATING = frozenset({"LDAP", "KERBEROS", "CUSTOM", "PAM"})
TRANSPORTS = ("binary", "http")
# HiveServer2 reads these environment variables *before* its conf: left set, they would silently
# override --host/--port.
OVERRIDING_ENV = ("HIVE_SERVER2_THRIFT_BIND_HOST", "HIVE_SERVER2_THRIFT_PORT",
                  "HIVE_SERVER2_THRIFT_HTTP_PORT", "HIVE_SERVER2_TRANSPORT_MODE")


@dataclass(frozen=True)
class Endpoint:
    """Where a started server listens and how a client must talk to it."""

    host: str
    port: int
    database: str
    settings: Mapping[str, str]

    @property
    def transport(self) -> str:
        return self.settings.get(TRANSPORT, "binary").lower()

    @property
    def auth(self) -> str:
        return self.settings.get(AUTH, "NONE").upper()

    @property
    def ssl(self) -> bool:
        return self.settings.get(USE_SSL, "false").lower() == "true"

    @property
    def client_host(self) -> str:
        """The address a client dials: a wildcard bind is reached through this machine's name."""
        return socket.getfqdn() if is_wildcard(self.host) else self.host

    @property
    def jdbc_url(self) -> str:
        host = self.client_host
        host = f"[{host}]" if ":" in host else host
        url = f"jdbc:hive2://{host}:{self.port}/{self.database}"
        if self.auth == "NOSASL":
            url += ";auth=noSasl"
        if self.transport == "http":
            url += f";transportMode=http;httpPath={self.settings.get(HTTP_PATH, 'cliservice')}"
        if self.ssl:
            url += ";ssl=true"
        return url


# --- settings ----------------------------------------------------------------------------------

def split_conf(conf: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``--conf`` pairs -> (Spark settings, server settings): ``hive.*`` keys are the server's."""
    spark = {k: v for k, v in conf.items() if not k.startswith("hive.")}
    hive = {k: v for k, v in conf.items() if k.startswith("hive.")}
    return spark, hive


def server_settings(project: Project, cli: Mapping[str, str], host: str | None,
                    port: int | None) -> dict[str, str]:
    """The server's ``hive.server2.*`` settings: defaults < project ``serve:`` < ``--conf`` < flags."""
    for key in project.config.serve:
        if key != ALLOW and not key.startswith("hive."):
            raise ServeError(
                f"serve: {key!r} is not a Thrift server setting (they start with `hive.server2.`; "
                "Spark settings go in the `spark:` section)", code="serve.bad_setting",
                path=project.project_file, line=project.raw["serve"].line_of(key))
    settings = {k: conf_text(v) for k, v in project.config.serve.items() if k != ALLOW}
    settings.update(cli)
    transport = settings.setdefault(TRANSPORT, "binary").lower()
    if transport not in TRANSPORTS:
        raise ServeError(f"{TRANSPORT}={settings[TRANSPORT]!r}: use binary or http", code="serve.bad_setting")
    auth = settings.setdefault(AUTH, "NONE").upper()
    if auth not in AUTH_MODES:
        raise ServeError(f"{AUTH}={settings[AUTH]!r}: use one of {', '.join(AUTH_MODES)}",
                            code="serve.bad_setting")
    port_key = HTTP_PORT if transport == "http" else BINARY_PORT
    if host is not None:
        settings[BIND_HOST] = host
    settings.setdefault(BIND_HOST, DEFAULT_HOST)
    if port is not None:
        settings[port_key] = str(port)
    settings.setdefault(port_key, str(DEFAULT_PORT))
    if not settings[port_key].isdigit() or int(settings[port_key]) > 65535:
        raise ServeError(f"{port_key}={settings[port_key]!r} is not a port number", code="serve.bad_setting")
    if settings.get(USE_SSL, "false").lower() == "true":
        keystore = settings.get(KEYSTORE_PATH, "")
        if not keystore or not Path(keystore).is_file():
            raise ServeError(f"{USE_SSL}=true needs {KEYSTORE_PATH}, a JKS or PKCS12 file"
                                + (f": {keystore} does not exist" if keystore else ""), code="serve.bad_setting")
    return settings


def listen_port(settings: Mapping[str, str]) -> int:
    return int(settings[HTTP_PORT if settings.get(TRANSPORT, "binary").lower() == "http" else BINARY_PORT])


# --- checks before the JVM starts --------------------------------------------------------------

def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "*")


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    if is_wildcard(host):
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve --host {host!r}: {exc.strerror}", code="serve.bad_host") from None
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_bind_safety(settings: Mapping[str, str], allow_insecure: bool) -> str | None:
    """Refuse a non-loopback bind that lets anyone in; return a warning for weaker set-ups, else None.

    A Thrift client runs arbitrary SQL, including the model UDFs (Python code) and reads of any file
    this user can read: on a reachable address without authentication that is remote code execution.
    """
    host = settings[BIND_HOST]
    if is_loopback(host):
        return None
    auth = settings.get(AUTH, "NONE").upper()
    ssl = settings.get(USE_SSL, "false").lower() == "true"
    if auth not in AUTHENTICATING:
        if not allow_insecure:
            raise ServeError(
                f"refusing to listen on {host or 'all interfaces'} with {AUTH}={auth}: anyone who can reach "
                "the port could run SQL and model code as this user. Enable authentication, e.g. in "
                "sqlinfer_project.yml `serve: {hive.server2.authentication: LDAP, "
                "hive.server2.authentication.ldap.url: ldaps://...}` or "
                "`--conf hive.server2.authentication=CUSTOM --conf hive.server2.custom.authentication.class=...`, "
                f"and TLS with hive.server2.use.SSL=true (see docs/serve.md); or keep the default --host "
                f"127.0.0.1; or, on a network you trust completely, pass {INSECURE_FLAG}.",
                code="serve.unsafe_bind")
        return f"warning: serving {host or 'all interfaces'} WITHOUT authentication ({INSECURE_FLAG})"
    if not ssl:
        return (f"warning: {auth} authentication without TLS sends passwords in clear text; "
                f"set {USE_SSL}=true with a keystore (docs/serve.md)")
    return None


def check_port_free(host: str, port: int) -> None:
    """Fail fast, before the JVM, when another process listens on ``host:port``."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Java's ServerSocket sets SO_REUSEADDR too: a port in TIME_WAIT is free for it, and for us.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("" if is_wildcard(host) and family == socket.AF_INET else host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {port} on {host} is already in use (another server, or an earlier `sqlinfer serve` "
                    "still running?): choose another with --port, or --port 0 for a free one",
                    code="serve.port_in_use") from None
            if exc.errno == errno.EACCES:
                raise ServeError(f"no permission to listen on port {port} (ports below 1024 need root): "
                                    "choose another with --port", code="serve.port_denied") from None
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}", code="serve.bad_host") from None


# --- the server ----------------------------------------------------------------------------------

def apply_settings(spark: SparkSession, settings: Mapping[str, str]) -> None:
    """Make ``settings`` the server's, as JVM system properties (see the module docstring for why).

    Call this right after the session is built: the first use of the metastore (a source that is a
    table, a view node) creates the HiveConf that the server later reuses, and it must see them.
    """
    jvm = spark._jvm  # the Thrift server has no Python API
    assert jvm is not None
    for key, value in settings.items():
        jvm.java.lang.System.setProperty(key, value)


class ThriftServer:
    """HiveThriftServer2 started from ``spark`` (after :func:`apply_settings`); ``stop()`` releases the port."""

    def __init__(self, spark: SparkSession, settings: Mapping[str, str]) -> None:
        from py4j.protocol import Py4JJavaError

        jvm = spark._jvm  # the Thrift server has no Python API
        assert jvm is not None
        try:
            # exitOnError=False: a failure is thrown to us instead of System.exit() without a word.
            self._server = jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithSparkSession(
                spark._jsparkSession, False)
        except Py4JJavaError as exc:
            raise start_error(exc, settings) from None
        thrift_service = jvm.java.lang.Class.forName("org.apache.hive.service.cli.thrift.ThriftCLIService")
        # With port 0 the socket's real port is known only now.
        self.port = next(int(s.getPortNumber()) for s in self._server.getServices() if thrift_service.isInstance(s))

    def stop(self) -> None:
        self._server.stop()


def start_error(exc: Exception, settings: Mapping[str, str]) -> ServeError:
    """A Java start failure as one line: the port for a bind failure, else the deepest cause."""
    text = str(exc)
    port = listen_port(settings)
    if "Address already in use" in text:
        return ServeError(f"port {port} on {settings[BIND_HOST]} is already in use: choose another with --port, "
                             "or --port 0 for a free one", code="serve.port_in_use")
    causes = re.findall(r"(?:Caused by: |^: )([\w.$]+(?:Exception|Error)[^\n]*)", text, flags=re.M)
    reason = causes[-1] if causes else text.splitlines()[0]
    hint = next((hint for needles, hint in _START_HINTS if any(n in text for n in needles)), "")
    return ServeError(f"the Thrift server did not start: {reason}{hint}", code="serve.start_failed")


# Java's words for the usual mistakes, and what to check.
_START_HINTS = (
    (("UnrecoverableKeyException", "keystore password was incorrect", "Keystore was tampered"),
     f" (check {KEYSTORE_PATH} and hive.server2.keystore.password)"),
    (("ClassNotFoundException",),
     " (a class named in the settings is not on the driver's classpath: add its jar with "
     "--conf spark.driver.extraClassPath=...)"),
)


def beeline_path() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "beeline"


def connect_hints(endpoint: Endpoint) -> list[str]:
    """The lines that tell a user how to connect."""
    # beeline sends no user name unless told, and NOSASL refuses a session without one.
    credentials = {"LDAP": " -n USER -p PASSWORD", "CUSTOM": " -n USER -p PASSWORD", "PAM": " -n USER -p PASSWORD",
                   "NOSASL": " -n USER"}.get(endpoint.auth, "")
    ssl = ";sslTrustStore=TRUSTSTORE;trustStorePassword=..." if endpoint.ssl else ""
    python_args = [f"{endpoint.client_host!r}", str(endpoint.port)]
    if endpoint.auth != "NONE":
        python_args.append(f"auth={endpoint.auth!r}")
    if endpoint.transport == "http":
        python_args.append("transport='http'")
    if endpoint.ssl:
        python_args.append("ssl=True, ca_file=CA_PEM")
    return [f"  JDBC URL: {endpoint.jdbc_url}",
            f"  beeline:  {beeline_path()} -u '{endpoint.jdbc_url}{ssl}'{credentials}",
            f"  Python:   from sqlinfer.client import connect; connect({', '.join(python_args)})"]


def serve(project: Project, *, host: str | None = None, port: int | None = None, master: str | None = None,
          conf: Mapping[str, str] | None = None, allow_insecure: bool = False,
          echo: Callable[[str], None] = print, ready: Callable[[Endpoint], None] | None = None) -> None:
    """Serve ``project`` until SIGINT or SIGTERM, then stop the server, Spark and the JVM.

    ``conf``: ``hive.*`` keys configure the server (over the project file's ``serve:``), others are Spark
    settings (over its ``spark:``). ``ready`` is called once clients can connect.
    """
    spark_conf, cli_hive = split_conf(conf or {})
    settings = server_settings(project, cli_hive, host, port)
    warning = check_bind_safety(settings, allow_insecure)
    check_port_free(settings[BIND_HOST], listen_port(settings))
    # The user's Spark settings with the SQL guard's added (its jar, its check rule, Spark's restricted mode).
    guarded = guard_conf({**project.config.spark, **spark_conf}, allowed(project))
    effective = session_conf(project.target, master, guarded)
    ensure_metastore_free(effective, "serve")
    folder = derby_folder(effective.get("spark.hadoop.javax.jdo.option.ConnectionURL", ""))
    project.resolve_models()  # declaration and weight errors before the JVM starts

    stop = threading.Event()

    def request_stop(*_: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for name in OVERRIDING_ENV:
            os.environ.pop(name, None)
        spark = project.session(master, guarded)
        # pyspark's SparkContext has just put in its own SIGINT handler (cancel jobs, raise
        # KeyboardInterrupt): Ctrl-C must stop the server cleanly instead.
        signal.signal(signal.SIGINT, request_stop)
        endpoint = _serve_session(project, spark, settings, folder, warning, echo, ready, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    echo(f"sqlinfer serve: stopped; port {endpoint.port} released")


def _serve_session(project: Project, spark: SparkSession, settings: Mapping[str, str], folder: Path | None,
                   warning: str | None, echo: Callable[[str], None], ready: Callable[[Endpoint], None] | None,
                   stop: threading.Event) -> Endpoint:
    """Register, start, announce, wait for ``stop``; always leave no server, Spark or JVM behind."""
    server: ThriftServer | None = None
    try:
        apply_settings(spark, settings)
        project.register(spark)
        for problem in project.warnings:
            echo(f"warning: {problem}")
        _open_metastore(spark, folder)
        # Before the server starts: the first client must already find the functions and views protected
        # and its connection's settings refused.
        protect(spark, project, lock_settings=True)
        skip_hive_function_registration(spark)
        server = ThriftServer(spark, settings)
        database = project.config.database if spark.catalog.databaseExists(project.config.database) else "default"
        endpoint = Endpoint(settings[BIND_HOST], server.port, database, settings)
        echo(f"sqlinfer serve: {project.config.name} on {endpoint.host}:{endpoint.port} "
             f"({endpoint.transport}{', TLS' if endpoint.ssl else ''}, authentication {endpoint.auth})")
        for line in connect_hints(endpoint) + _catalog_lines(project, spark, database):
            echo(line)
        echo(f"  SQL guard: on, allowing {', '.join(allowed(project)) or 'none'} of its features "
             "(docs/serve.md#what-clients-cannot-do)")
        if warning:
            echo(warning)
        echo("Stop with Ctrl-C or SIGTERM.")
        if ready:
            ready(endpoint)
        _wait(stop, spark)
        return endpoint
    finally:
        _shutdown(server, spark)


def skip_hive_function_registration(spark: SparkSession) -> None:
    """Keep Hive from loading its function registry when the Thrift server closes a client's session.

    That close can make a new Hive object (on a pool thread that served another session), and a new Hive
    registers Hive's functions once per JVM, which needs hive-llap classes PySpark lacks: the close fails
    with NoClassDefFoundError and leaves Hive's registration stuck half-way. Spark never uses that
    registry. The why in full: resources/HiveFunctions.java.
    """
    jvm = spark._jvm
    assert jvm is not None
    if not jvm.sqlinfer.guard.HiveFunctions.skipRegistration():
        raise ServeError("cannot keep Hive from registering its functions (a Hive version in pyspark's jars that "
                         "sqlinfer does not know), so client sessions could fail to close: reinstall sqlinfer "
                         "with the supported pyspark", code="serve.guard_unavailable")


def _open_metastore(spark: SparkSession, folder: Path | None) -> None:
    """Boot the metastore now: a lock conflict is a start error, and this process then holds it."""
    try:
        spark.catalog.listDatabases()
    except Exception as exc:
        if folder and DERBY_LOCKED in str(exc):
            raise metastore_busy_error(folder, metastore_holder(folder) or "another process", "serve") from None
        raise


def _catalog_lines(project: Project, spark: SparkSession, database: str) -> list[str]:
    functions = ", ".join(m.plan.udf_name for m in project.resolve_models()) or "none"
    sources = ", ".join(project.config.sources) or "none"
    tables = ", ".join(t.name for t in spark.catalog.listTables(database) if not t.isTemporary) or "none"
    return [f"  functions: {functions}", f"  sources (views): {sources}", f"  tables in {database}: {tables}"]


def _wait(stop: threading.Event, spark: SparkSession) -> None:
    """Block until a signal; fail loudly if the JVM dies on its own (it would otherwise go unnoticed)."""
    process = jvm_process(spark)
    while not stop.wait(0.5):
        # A SIGTERM sent to the whole process group (systemd, `timeout`, a container runtime) ends the
        # JVM too; our handler has then set `stop` already, or will within a moment.
        if process is not None and process.poll() is not None and not stop.wait(2.0):
            raise ServeError(f"the Spark JVM exited unexpectedly (exit code {process.returncode}); "
                             "why is at the end of Spark's log", code="serve.jvm_exited")


def _shutdown(server: ThriftServer | None, spark: SparkSession) -> None:
    """Stop the server and Spark, then end the JVM: pyspark leaves it running until Python exits."""
    end_jvm(spark, first=server.stop if server else None, timeout_s=30)
