"""A DB-API 2.0 connection to a `sqlinfer serve` server (or any Spark Thrift / HiveServer2), via PyHive.

    from sqlinfer.client import connect
    with connect("127.0.0.1", 10000) as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT digits_predict(content).label FROM digits_images LIMIT 5")
        print(cursor.fetchall())

PyHive covers the plain binary transport; this helper also builds the transports PyHive leaves to
its caller (TLS on the binary transport, http with a CA file, PAM), so one call matches every
server set-up that docs/serve.md describes. Needs the client extra: ``pip install 'sqlinfer[client]'``.
"""

from __future__ import annotations

import base64
import getpass
import ssl as ssl_module
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlinfer.errors import ClientError

if TYPE_CHECKING:
    from pyhive.hive import Connection

# The hive.server2.authentication modes a client can log in to with a user name and password
# (NONE ignores the password but the SASL PLAIN handshake still needs one).
PLAIN_MODES = ("NONE", "LDAP", "CUSTOM", "PAM")


def connect(host: str = "127.0.0.1", port: int = 10000, *, username: str | None = None,
            password: str | None = None, auth: str = "NONE", database: str = "default",
            transport: str = "binary", http_path: str = "cliservice", ssl: bool = False,
            ca_file: str | None = None, timeout_s: float | None = None,
            configuration: Mapping[str, str] | None = None) -> Connection:
    """Open a DB-API connection.

    ``auth`` must match the server's ``hive.server2.authentication`` (NONE, NOSASL, LDAP, CUSTOM,
    PAM); ``transport`` its ``hive.server2.transport.mode`` (binary, http); ``ssl`` its
    ``hive.server2.use.SSL``, with ``ca_file`` the PEM certificate(s) to trust (default: the system's).
    ``timeout_s`` bounds each network read (None waits as long as a query takes).
    """
    try:
        from pyhive import hive
    except ImportError:
        raise ClientError("the client needs PyHive and thrift: pip install 'sqlinfer[client]'",
                            code="client.missing_pyhive") from None
    auth = auth.upper()
    if auth not in PLAIN_MODES + ("NOSASL",):
        raise ClientError(f"auth={auth!r}: this helper supports {', '.join(PLAIN_MODES)} and NOSASL "
                            "(for KERBEROS use pyhive.hive.connect directly)", code="client.bad_auth")
    username = username or getpass.getuser()
    context = ssl_module.create_default_context(cafile=ca_file) if ssl else None
    if transport == "http":
        thrift_transport = _http_transport(host, port, http_path, username, password, context)
    elif transport == "binary":
        thrift_transport = _binary_transport(host, port, auth, username, password, context)
    else:
        raise ClientError(f"transport={transport!r}: use binary or http", code="client.bad_transport")
    if timeout_s is not None:
        _socket_of(thrift_transport).setTimeout(timeout_s * 1000)
    try:
        return _waiting_connection(hive)(thrift_transport=thrift_transport, username=username, database=database,
                                         configuration=dict(configuration or {}))
    except Exception as exc:  # thrift, SASL and HTTP errors have no common base class
        where = f"{'https' if ssl and transport == 'http' else transport}://{host}:{port}"
        raise ClientError(f"cannot connect to {where} as {username!r} ({auth}): {exc}",
                            code="client.connect_failed") from exc


def _waiting_connection(hive: Any) -> type[Connection]:
    """PyHive's connection, with cursors that run each statement in the background on the server and
    wait for it by polling, as Hive's JDBC driver (and so beeline) does.

    PyHive's own ``execute`` runs a statement on the server's connection thread until it ends:
    the server cannot notice that the client went away meanwhile, and a killed client's query
    runs to its end. With the statement in the background, the connection thread reads the
    closed socket at once, closes the session, and Spark cancels the session's jobs.
    """
    import time

    from TCLIService.ttypes import TOperationState

    running = (TOperationState.INITIALIZED_STATE, TOperationState.PENDING_STATE, TOperationState.RUNNING_STATE)

    class Cursor(hive.Cursor):
        def execute(self, operation: str, parameters: Any = None, **kwargs: Any) -> None:
            super().execute(operation, parameters, async_=True)
            delay = 0.005  # short queries answer in milliseconds; long ones are polled twice a second
            while (status := self.poll()).operationState in running:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            if status.operationState != TOperationState.FINISHED_STATE:
                raise hive.OperationalError(status)

    class WaitingConnection(hive.Connection):
        def cursor(self, *args: Any, **kwargs: Any) -> Cursor:
            return Cursor(self, *args, **kwargs)

    return WaitingConnection


def _binary_transport(host: str, port: int, auth: str, username: str, password: str | None,
                      context: ssl_module.SSLContext | None) -> Any:
    from thrift.transport import TSocket, TSSLSocket, TTransport

    sock = TSSLSocket.TSSLSocket(host, port, ssl_context=context) if context else TSocket.TSocket(host, port)
    if auth == "NOSASL":
        return TTransport.TBufferedTransport(sock)
    import thrift_sasl
    from pyhive.hive import get_installed_sasl

    # SASL PLAIN: the server checks the password in LDAP/CUSTOM/PAM mode and ignores it in NONE mode.
    secret = password if password is not None else "x"
    return thrift_sasl.TSaslClientTransport(
        lambda: get_installed_sasl(host=host, sasl_auth="PLAIN", username=username, password=secret),
        "PLAIN", sock)


def _http_transport(host: str, port: int, path: str, username: str, password: str | None,
                    context: ssl_module.SSLContext | None) -> Any:
    from thrift.transport import THttpClient

    scheme = "https" if context else "http"
    transport = THttpClient.THttpClient(f"{scheme}://{host}:{port}/{path.strip('/')}", ssl_context=context)
    # The http transport authenticates every request with HTTP Basic (any password in NONE mode).
    token = base64.b64encode(f"{username}:{password if password is not None else 'x'}".encode()).decode()
    transport.setCustomHeaders({"Authorization": f"Basic {token}"})
    return transport


def _socket_of(transport: Any) -> Any:
    """The object that owns the socket timeout: the socket under SASL/buffering, or the HTTP client."""
    for attribute in ("_trans", "_TBufferedTransport__trans"):
        inner = getattr(transport, attribute, None)
        if inner is not None:
            return inner
    return transport
