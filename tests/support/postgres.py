"""A throwaway PostgreSQL server for the Vault database-secrets tests.

Debian's binaries (``/usr/lib/postgresql/*/bin``): ``initdb`` in a fresh directory, ``postgres``
on 127.0.0.1 and a free port (never the system cluster). Authentication: the superuser
``postgres`` only over the unix socket, which lives in the private data directory (``trust``);
every TCP login, Vault's and the tests', uses scram-sha-256 passwords. As root (PostgreSQL refuses
to run as root) the server runs as the ``postgres`` user, or ``nobody``.

No binaries: the fixture fails, saying how to install them (`make test` does).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hvac
import psycopg
import pytest

from tests.redis_procs import free_port
from tests.support.openbao import enable_engine

START_TIMEOUT = 20.0
ADMIN_USER = "vault_admin"
APP_DB = "app"
_SHARED: dict[str, Postgres] = {}


def pg_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` holding initdb and postgres, if any."""
    found = [
        d
        for d in Path("/usr/lib/postgresql").glob("*/bin")
        if (d / "initdb").exists() and (d / "postgres").exists()
    ]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return found[-1] if found else None


@dataclass
class Postgres:
    port: int
    root: Path  # holds data/, the socket and the log; removed at stop
    proc: subprocess.Popen[bytes]
    admin_password: str

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def superuser(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user="postgres",
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def login(self, user: str, password: str) -> psycopg.Connection[tuple[object, ...]]:
        """Log in over TCP with a password, as an MCP server would with Vault's credentials."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=password,
            dbname=APP_DB,
            autocommit=True,
            connect_timeout=5,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(bindir: Path) -> Postgres:
    root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
    demote: dict[str, int] = {}
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            user = pwd.getpwnam("nobody")
        demote = {"user": user.pw_uid, "group": user.pw_gid}
        os.chown(root, user.pw_uid, user.pw_gid)
    os.chmod(root, 0o700)
    data, sock = root / "data", root / "sock"

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd=root, **demote)  # type: ignore[call-overload]

    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        )
        sock.mkdir(mode=0o700)
        if demote:
            os.chown(sock, demote["user"], demote["group"])
        (data / "pg_hba.conf").write_text(
            "local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from None
    port = free_port()
    log = (root / "postgres.log").open("wb")
    proc = subprocess.Popen(  # type: ignore[call-overload]
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(sock),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        **demote,
    )
    log.close()
    pg = Postgres(port, root, proc, admin_password="adm-" + os.urandom(12).hex())
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with pg.superuser() as conn:
                conn.execute(
                    f"CREATE ROLE {ADMIN_USER} WITH LOGIN CREATEROLE PASSWORD '{pg.admin_password}'"
                )
                conn.execute(f"CREATE DATABASE {APP_DB} OWNER {ADMIN_USER}")
            break
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                output = (root / "postgres.log").read_text(errors="replace")[-2000:]
                pg.stop()
                raise RuntimeError(f"PostgreSQL did not start: {output}") from None
            time.sleep(0.05)
    with pg.login(ADMIN_USER, pg.admin_password) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items VALUES (1, 'one'), (2, 'two')")
    return pg


def database_role(client: hvac.Client, pg: Postgres, role: str, *, ttl: int = 300) -> None:
    """The database engine on ``pg`` with a role that may read the ``items`` table."""
    enable_engine(client, "database", "database")
    client.secrets.database.configure(
        name="app",
        plugin_name="postgresql-database-plugin",
        connection_url=(
            "postgresql://{{username}}:{{password}}@127.0.0.1:"
            f"{pg.port}/{APP_DB}?sslmode=disable"
        ),
        username=ADMIN_USER,
        password=pg.admin_password,
        allowed_roles="*",
        verify_connection=True,
    )
    client.secrets.database.create_role(
        name=role,
        db_name="app",
        creation_statements=[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
            "VALID UNTIL '{{expiration}}';",
            'GRANT SELECT ON items TO "{{name}}";',
        ],
        default_ttl=ttl,
        max_ttl=ttl * 2,
    )


def shared(config: pytest.Config, start: Callable[[], Postgres]) -> Postgres:
    pg = _SHARED.get("pg")
    if pg is None or pg.proc.poll() is not None:
        pg = start()
        _SHARED["pg"] = pg
        config.add_cleanup(pg.stop)
    return pg


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Postgres:
    """The session's PostgreSQL. `make test` installs the binaries: missing ones fail the run."""
    bindir = pg_bin_dir()
    if bindir is None:
        pytest.fail(
            "no PostgreSQL binaries in /usr/lib/postgresql/*/bin: install postgresql "
            "(e.g. apt-get install postgresql) to run the database-secrets tests"
        )
    return shared(request.config, lambda: start_postgres(bindir))
