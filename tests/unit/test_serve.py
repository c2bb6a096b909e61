"""`sqlinfer serve`'s checks before any JVM: server settings and their precedence, unsafe binds, a
busy port, JDBC URLs, and the start-up failures that must come before Java (the end-to-end server
tests are in tests/functional/test_serve.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import write_project

from sqlinfer.errors import SqlinferError
from sqlinfer.project import Project
from sqlinfer.runtime.metastore import derby_folder
from sqlinfer.serve.server import Endpoint, check_bind_safety, check_port_free, server_settings

SERVE_SECTION = "serve:\n  hive.server2.thrift.port: 10555\n  hive.server2.authentication: custom\n"


def run_sqlinfer(*args: str) -> Result:
    """The command in this process: it must fail before any JVM (the guard in conftest.py)."""
    from sqlinfer.cli import main

    return CliRunner().invoke(main, list(args), prog_name="sqlinfer")


@pytest.fixture()
def project(tmp_path: Path) -> Project:
    root = write_project(tmp_path / "p", "models: []\n", "name: p\n" + SERVE_SECTION)
    return Project.load(root)


# --- bind safety -------------------------------------------------------------------------------

def bind(host: str, **extra: str) -> dict[str, str]:
    return {"hive.server2.thrift.bind.host": host, **extra}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_binds_are_safe_without_auth(host: str) -> None:
    assert check_bind_safety(bind(host), allow_insecure=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_wildcard_bind_without_auth_is_refused(host: str) -> None:
    with pytest.raises(SqlinferError) as info:
        check_bind_safety(bind(host), allow_insecure=False)
    assert info.value.code == "serve.unsafe_bind"
    assert info.value.message.startswith(f"refusing to listen on {host} with hive.server2.authentication=NONE: ")
    assert info.value.message.endswith("on a network you trust completely, pass --insecure-no-auth.")


def test_insecure_flag_turns_the_refusal_into_a_warning() -> None:
    assert check_bind_safety(bind("0.0.0.0"), allow_insecure=True) == \
        "warning: serving 0.0.0.0 WITHOUT authentication (--insecure-no-auth)"


def test_password_auth_without_tls_warns_of_clear_text() -> None:
    ldap = bind("0.0.0.0", **{"hive.server2.authentication": "LDAP"})
    assert check_bind_safety(ldap, allow_insecure=False) == (
        "warning: LDAP authentication without TLS sends passwords in clear text; "
        "set hive.server2.use.SSL=true with a keystore (docs/serve.md)")


def test_password_auth_with_tls_is_safe() -> None:
    ldap_tls = bind("0.0.0.0", **{"hive.server2.authentication": "LDAP", "hive.server2.use.SSL": "true"})
    assert check_bind_safety(ldap_tls, allow_insecure=False) is None


# --- settings ----------------------------------------------------------------------------------

def test_project_file_settings_fill_in_defaults(project: Project) -> None:
    assert server_settings(project, {}, None, None) == {
        "hive.server2.thrift.port": "10555",
        "hive.server2.authentication": "custom",
        "hive.server2.transport.mode": "binary",
        "hive.server2.thrift.bind.host": "127.0.0.1",
    }


def test_conf_wins_over_the_project_file(project: Project) -> None:
    settings = server_settings(project, {"hive.server2.thrift.port": "10556"}, None, None)
    assert settings["hive.server2.thrift.port"] == "10556"


def test_port_and_host_flags_win_over_conf(project: Project) -> None:
    settings = server_settings(project, {"hive.server2.thrift.port": "10556"}, "::1", 0)
    assert (settings["hive.server2.thrift.port"], settings["hive.server2.thrift.bind.host"]) == ("0", "::1")


def test_http_transport_takes_the_http_port(project: Project) -> None:
    settings = server_settings(project, {"hive.server2.transport.mode": "http"}, None, 7)
    assert settings["hive.server2.thrift.http.port"] == "7"
    assert settings["hive.server2.thrift.port"] == "10555"  # the binary port, from the file, unused


@pytest.mark.parametrize(("cli", "message"), [
    ({"hive.server2.transport.mode": "grpc"}, "hive.server2.transport.mode='grpc': use binary or http"),
    ({"hive.server2.authentication": "magic"},
     "hive.server2.authentication='magic': use one of NONE, NOSASL, LDAP, KERBEROS, CUSTOM, PAM"),
    ({"hive.server2.thrift.port": "70000"}, "hive.server2.thrift.port='70000' is not a port number"),
    ({"hive.server2.use.SSL": "true"}, "hive.server2.use.SSL=true needs hive.server2.keystore.path, "
                                       "a JKS or PKCS12 file"),
])
def test_bad_server_settings_are_refused(project: Project, cli: dict[str, str], message: str) -> None:
    with pytest.raises(SqlinferError) as info:
        server_settings(project, cli, None, None)
    assert (info.value.code, info.value.message) == ("serve.bad_setting", message)


def test_a_spark_setting_under_serve_names_its_line(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", "models: []\n", "name: p\n" + SERVE_SECTION + "  spark.executor.memory: 2g\n")
    with pytest.raises(SqlinferError) as info:
        server_settings(Project.load(root), {}, None, None)
    assert info.value.code == "serve.bad_setting"
    assert info.value.path == str(root / "sqlinfer_project.yml")
    assert info.value.line == 5
    assert info.value.message.startswith("serve: 'spark.executor.memory' is not a Thrift server setting")


# --- port, URLs, metastore folder ------------------------------------------------------------------

def test_busy_port_is_an_error_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SqlinferError) as info:
            check_port_free("127.0.0.1", port)
    assert info.value.code == "serve.port_in_use"
    assert info.value.message.startswith(f"port {port} on 127.0.0.1 is already in use ")
    assert info.value.message.endswith("choose another with --port, or --port 0 for a free one")


@pytest.mark.parametrize(("host", "settings", "url"), [
    ("127.0.0.1", {}, "jdbc:hive2://127.0.0.1:10001/default"),
    ("127.0.0.1", {"hive.server2.authentication": "NOSASL"}, "jdbc:hive2://127.0.0.1:10001/default;auth=noSasl"),
    ("127.0.0.1", {"hive.server2.transport.mode": "http", "hive.server2.use.SSL": "true"},
     "jdbc:hive2://127.0.0.1:10001/default;transportMode=http;httpPath=cliservice;ssl=true"),
    ("::1", {}, "jdbc:hive2://[::1]:10001/default"),
])
def test_jdbc_url_for_each_transport(host: str, settings: dict[str, str], url: str) -> None:
    assert Endpoint(host, 10001, "default", settings).jdbc_url == url


@pytest.mark.parametrize(("url", "folder"), [
    ("jdbc:derby:;databaseName=/p/target/metastore_db;create=true", Path("/p/target/metastore_db")),
    ("jdbc:derby:/p/metastore_db;create=true", Path("/p/metastore_db")),
    ("jdbc:derby:memory:db;create=true", None),
    ("jdbc:mysql://db/hive", None),
])
def test_derby_folder_from_the_metastore_url(url: str, folder: Path | None) -> None:
    assert derby_folder(url) == folder


# --- the command fails before any JVM (the unit tests' guard fails a test that starts Java) ----------

@pytest.mark.parametrize("extra", [(), ("--conf", "hive.server2.authentication=NOSASL")])
def test_non_loopback_bind_without_auth_is_refused(digits_models: Path, extra: tuple[str, ...]) -> None:
    result = run_sqlinfer("serve", str(digits_models), "--host", "0.0.0.0", *extra)
    assert result.exit_code == 1
    auth = "NOSASL" if extra else "NONE"
    assert result.stderr.startswith(f"error: refusing to listen on 0.0.0.0 with hive.server2.authentication={auth}: ")
    assert "(see docs/serve.md)" in result.stderr
    assert result.stderr.endswith("pass --insecure-no-auth. [serve.unsafe_bind]\n")


def test_an_error_before_the_jvm_names_no_log_of_an_earlier_command(digits_models: Path, tmp_path: Path) -> None:
    """In a process that started a JVM for an earlier command (the test suite's session, a Python API
    user), a command that fails before starting one must not send its user to that JVM's log."""
    from sqlinfer.runtime import jvm

    earlier = tmp_path / "earlier" / "spark.log"
    try:
        jvm.open_spark_log(earlier).close()
        assert jvm.spark_log() == earlier
        result = run_sqlinfer("serve", str(digits_models), "--host", "0.0.0.0")
    finally:
        jvm.forget_spark_log()
    assert result.exit_code == 1
    assert "Spark's log" not in result.stderr, result.stderr
    assert result.stderr.endswith("pass --insecure-no-auth. [serve.unsafe_bind]\n")


def test_tls_without_a_keystore_fails_before_the_jvm(digits_models: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-keystore.p12"
    result = run_sqlinfer("serve", str(digits_models), "--conf", "hive.server2.use.SSL=true",
                          "--conf", f"hive.server2.keystore.path={missing}")
    assert result.exit_code == 1
    assert result.stderr == (f"error: hive.server2.use.SSL=true needs hive.server2.keystore.path, a JKS or PKCS12 "
                             f"file: {missing} does not exist [serve.bad_setting]\n")
