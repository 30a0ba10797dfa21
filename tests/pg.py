"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl from the machine's binaries in a
temporary directory, on a free loopback port, removed when stopped.

initdb refuses to run as root, so as root the server runs as an unprivileged system user
(`postgres` when it exists, else `nobody`) through setpriv, in a directory owned by that user.
Each test gets a database of its own (`new_database`), so tests never see each other's rows.

Missing binaries skip the PostgreSQL half of the store tests, unless
ASSISTANT_TEST_POSTGRES=required (.ci/run sets it): then they fail.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

REQUIRED = os.environ.get("ASSISTANT_TEST_POSTGRES", "") == "required"
# Durability is not what the tests are about: no fsync. Many servers start and stop in one
# session, each with a writer and reader threads: room for their connections.
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "max_connections": "400", "shared_buffers": "32MB", "listen_addresses": "127.0.0.1"}


def binaries() -> Path | None:
    """The directory holding initdb and pg_ctl (PATH first, then Debian's layout)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).parent)):
        return Path(found).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run "
                       "PostgreSQL as")


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="assistant-pg-"))
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data = self.root / "data"
        self.port = _free_port()
        self._names = itertools.count(1)

    def _run(self, *args: str) -> None:
        prefix = [] if self.user is None else [
            "setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
            "--clear-groups", "--"]
        env = {**os.environ, "LC_ALL": "C"}
        done = subprocess.run([*prefix, *args], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}")

    def start(self) -> PostgresServer:
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "-E", "UTF8", "--no-sync")
        options = " ".join([f"-p {self.port}", f"-k {self.root}",
                            *(f"-c {k}={v}" for k, v in SETTINGS.items())])
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"test_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"create database {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
