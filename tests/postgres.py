"""A throwaway PostgreSQL server for tests, started from the Debian binaries.

Use it from a test module with ``pytest_plugins = ["tests.postgres"]`` and ask for the session-scoped
fixture `postgres_server`; `PostgresServer.create_database()` then gives each test its own empty database.

- The binaries are /usr/lib/postgresql/<version>/bin/{initdb,pg_ctl} (Debian package `postgresql`).
  Missing binaries fail the run when the environment variable CI is set (CI must install them: see
  .ci/run) and skip the tests otherwise.
- initdb refuses to run as root, so as root the server runs as the `postgres` user (created by the Debian
  package) or else `nobody`, in a temporary directory handed to that user.
- The server listens on 127.0.0.1 only, on a free port, with no Unix socket, and with a random password
  (scram-sha-256), and it is stopped and deleted when the session ends. A run killed before its
  teardown leaves its server behind; the next run stops it (see `_reap_abandoned`).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

__all__ = ["PostgresServer", "find_pg_bin", "postgres_server"]


_PREFIX = "mscc-alert-pg-"


def find_pg_bin() -> Path | None:
    """The bin directory of the newest PostgreSQL that Debian installed, if any."""
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    candidates = [p for p in candidates if (p / "pg_ctl").exists()]

    def version(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in bin_dir.parent.name.split(".") if part.isdigit())

    return max(candidates, key=version) if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run as, or None when we are not root (then we run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_abandoned(bin_dir: Path, user: pwd.struct_passwd | None) -> None:
    """Stop and delete servers left by test runs that were killed before their teardown ran.

    Only directories this fixture made are considered, and only when the pytest process recorded in
    them is gone.
    """
    for base_dir in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        try:
            owner = int((base_dir / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        server = PostgresServer(bin_dir=bin_dir, base_dir=base_dir, user=user)
        if (server.data_dir / "postmaster.pid").exists():
            try:
                server.stop()
            except RuntimeError:
                continue  # leave what we cannot stop for a person to look at
        shutil.rmtree(base_dir, ignore_errors=True)


@dataclass
class PostgresServer:
    bin_dir: Path
    base_dir: Path
    user: pwd.struct_passwd | None
    port: int = field(default_factory=_free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        completed = subprocess.run(command, cwd=self.base_dir, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}{log}")

    def start(self) -> None:
        if self.user is not None:
            os.chown(self.base_dir, self.user.pw_uid, self.user.pw_gid)
        self.base_dir.chmod(0o700)
        password_file = self.base_dir / "password"
        password_file.write_text(self.password + "\n")
        if self.user is not None:
            os.chown(password_file, self.user.pw_uid, self.user.pw_gid)
        self._run(
            "initdb",
            f"--pgdata={self.data_dir}",
            "--username=postgres",
            "--auth=scram-sha-256",
            f"--pwfile={password_file}",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a throwaway cluster: skip fsync of the freshly written files
        )
        password_file.unlink()
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n")
        self._run("pg_ctl", f"--pgdata={self.data_dir}", f"--log={self.log_file}", "--wait", "start")

    def stop(self) -> None:
        self._run("pg_ctl", f"--pgdata={self.data_dir}", "--mode=fast", "--wait", "stop")

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"test_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # name is ours: [a-z0-9_] only
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the whole test session (see the module docstring)."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        reason = "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install them", pytrace=False)
        pytest.skip(reason)
    user = _server_user()
    _reap_abandoned(bin_dir, user)
    base_dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
    (base_dir / "owner.pid").write_text(str(os.getpid()))
    server = PostgresServer(bin_dir=bin_dir, base_dir=base_dir, user=user)
    try:
        server.start()
        yield server
    finally:
        if (server.data_dir / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh feedback database for one test, on each store: an SQLite file in a directory that does not exist
    yet (the service must create it), or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'not-yet' / 'feedback.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()
