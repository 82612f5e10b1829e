"""Real PostgreSQL and MLflow tracking servers for tests, bound to 127.0.0.1 only.

The tests start and stop these themselves; nothing here is a long-lived service.

Fixtures (register them in ``conftest.py`` with
``from servers import postgres_url, fresh_postgres_db, mlflow_server  # noqa: F401``):

* ``postgres_url`` (session): URL of the ``flower_exp_test`` database in a throwaway cluster.
* ``fresh_postgres_db`` (function): URL of a new, uniquely named database in that cluster.
* ``mlflow_server`` (function): a factory ``mlflow_server(backend_uri=None, artifact_dir=None)
  -> "http://127.0.0.1:PORT"`` that starts ``mlflow server`` and stops it after the test.

Without fixtures: ``postgres_cluster()`` and ``mlflow_server_process(...)`` are context managers.

Also a local HTTP server for a test's own routes (image URLs): subclass ``QuietHandler``, serve it
with ``http_server(handler)``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
TEST_DB = "flower_exp_test"
PG_SUPERUSER = "postgres"
PG_INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH; "
    "install them with: apt-get install -y --no-install-recommends postgresql"
)
MLFLOW_START_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (callers retry if it gets taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started with ``start_new_session=True`` and every process it forked
    (gunicorn/uvicorn workers): SIGTERM to its process group, SIGKILL if it lingers."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def listening_addresses(port: int) -> set[str]:
    """Local addresses (as text) with a TCP socket in LISTEN state on ``port`` (Linux /proc)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port or len(addr_hex) != width:
                continue
            raw = bytes.fromhex(addr_hex)
            # /proc stores each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if width == 8 else socket.AF_INET6
            found.add(socket.inet_ntop(family, raw))
    return found


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log at {path}: {exc}>"


def _kill_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session), then SIGKILL."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        elif proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; give the rest of the group (uvicorn worker) a moment, then stop.
        if pgid is None or not _group_alive(pgid, wait=5.0):
            return
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _group_alive(pgid: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# PostgreSQL


def find_pg_bin() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``: the highest /usr/lib/postgresql/<v>/bin, else PATH."""

    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates = [
        path for path in Path("/usr/lib/postgresql").glob("*/bin") if (path / "initdb").is_file() and (path / "pg_ctl").is_file()
    ]
    if candidates:
        return max(candidates, key=version_key)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent
    return None


def postgres_url_for(port: int, dbname: str, user: str = PG_SUPERUSER) -> str:
    return f"postgresql+psycopg2://{user}@{LOOPBACK}:{port}/{dbname}"


def _psycopg2_connect(url: str):
    import psycopg2

    parts = urllib.parse.urlsplit(url)
    return psycopg2.connect(
        host=parts.hostname,
        port=parts.port,
        user=parts.username or PG_SUPERUSER,
        dbname=parts.path.lstrip("/") or "postgres",
        connect_timeout=10,
    )


def create_database(url: str, name: str | None = None) -> str:
    """Create database ``name`` (default: a unique ``t_<hex>``) in the cluster of ``url``; return its URL."""
    name = name or f"t_{uuid.uuid4().hex[:12]}"
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"unsafe database name {name!r}")
    conn = _psycopg2_connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temp dir, listening on 127.0.0.1 only."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.port: int | None = None
        self.root = Path(tempfile.mkdtemp(prefix="flower_exp_pg_"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "postgres.log"
        self._started = False
        # initdb and postgres refuse to run as root: run them as the `postgres` OS user then.
        self._run_as: str | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(PG_SUPERUSER)
            except KeyError:
                self.cleanup()
                raise RuntimeError(
                    "running as root but there is no 'postgres' OS user to run the server as; "
                    "install the server package: apt-get install -y --no-install-recommends postgresql"
                ) from None
            self._run_as = owner.pw_name
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.sock.mkdir()
        if self._run_as:
            shutil.chown(self.sock, user=self._run_as, group=owner.pw_gid)

    def _cmd(self, *argv: str) -> list[str]:
        if self._run_as is None:
            return list(argv)
        if shutil.which("runuser"):
            return ["runuser", "-u", self._run_as, "--", *argv]
        return ["su", "-s", "/bin/sh", self._run_as, "-c", shlex.join(argv)]

    def _run(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self._cmd(*argv),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                f"--- {self.log} ---\n{_tail(self.log)}"
            )
        return proc

    def start(self, attempts: int = 3) -> None:
        bin_ = self.bin_dir
        self._run(
            str(bin_ / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_SUPERUSER,
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# flower_exp tests: loopback only, throwaway data\n"
                f"listen_addresses = '{LOOPBACK}'\n"
                f"unix_socket_directories = '{self.sock}'\n"
                "max_connections = 200\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        last_error: Exception | None = None
        for _ in range(attempts):
            self.port = free_port()
            proc = self._run(
                str(bin_ / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
                "-l", str(self.log), "-o", f"-p {self.port}",
                timeout=90, check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                self._started = True
                break
            last_error = RuntimeError(
                f"pg_ctl start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n--- {self.log} ---\n{_tail(self.log)}"
            )
            # A port race leaves nothing running; anything else may: stop before retrying.
            self._run(str(bin_ / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", check=False)
        else:
            raise last_error  # type: ignore[misc]

    def url(self, dbname: str = "postgres") -> str:
        assert self.port is not None, "cluster not started"
        return postgres_url_for(self.port, dbname)

    def stop(self) -> None:
        if self._started:
            pg_ctl = str(self.bin_dir / "pg_ctl")
            proc = self._run(pg_ctl, "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", check=False)
            if proc.returncode != 0:
                self._run(pg_ctl, "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", check=False)
            self._kill_leftover_postmaster()
            self._started = False

    def _kill_leftover_postmaster(self) -> None:
        pid_file = self.data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster(bin_dir: Path | None = None) -> Iterator[PostgresCluster]:
    """Start a throwaway cluster; stop it and delete its files on exit (also on failure)."""
    bin_dir = bin_dir or find_pg_bin()
    if bin_dir is None:
        raise RuntimeError(PG_INSTALL_HINT)
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            cluster.cleanup()


# One cluster per process even if the fixture is registered in several modules; refcounted.
_shared_lock = threading.Lock()
_shared: dict[str, object] = {"stack": None, "url": None, "users": 0}


def _acquire_shared_postgres() -> str:
    with _shared_lock:
        if _shared["users"] == 0:
            stack = contextlib.ExitStack()
            try:
                cluster = stack.enter_context(postgres_cluster())
                url = create_database(cluster.url(), TEST_DB)
            except BaseException:
                stack.close()
                raise
            _shared.update(stack=stack, url=url)
        _shared["users"] = int(_shared["users"]) + 1  # type: ignore[arg-type]
        return str(_shared["url"])


def _release_shared_postgres() -> None:
    with _shared_lock:
        _shared["users"] = int(_shared["users"]) - 1  # type: ignore[arg-type]
        if _shared["users"] == 0:
            stack = _shared["stack"]
            _shared.update(stack=None, url=None)
            stack.close()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://postgres@127.0.0.1:PORT/flower_exp_test`` in a throwaway cluster."""
    if find_pg_bin() is None:
        pytest.skip(PG_INSTALL_HINT)
    pytest.importorskip("psycopg2", reason="psycopg2 missing: install the dev extra (pip install -e '.[dev]')")
    url = _acquire_shared_postgres()
    try:
        yield url
    finally:
        _release_shared_postgres()


@pytest.fixture
def fresh_postgres_db(postgres_url: str) -> str:
    """URL of a new, uniquely named database in the session cluster (not shared with other tests)."""
    return create_database(postgres_url)


# --------------------------------------------------------------------------------------------
# MLflow tracking server


def _mlflow_command() -> list[str]:
    exe = Path(sys.executable).parent / "mlflow"  # the venv's console script, not resolved
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(
        {
            # MLflow 3 otherwise forks a job runner with ~7 huey consumer processes (~240 MB each).
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@contextlib.contextmanager
def mlflow_server_process(
    backend_uri: str,
    artifact_dir: str | os.PathLike,
    *,
    timeout: float = MLFLOW_START_TIMEOUT_S,
    log_path: str | os.PathLike | None = None,
    attempts: int = 3,
) -> Iterator[str]:
    """Run ``mlflow server`` on 127.0.0.1 with proxied artifacts in ``artifact_dir``; yield its URL.

    Artifacts are served (``--serve-artifacts --artifacts-destination``): new experiments get
    ``mlflow-artifacts:/`` locations, so clients in any process upload and download over HTTP.
    """
    if backend_uri.startswith("postgresql"):
        # MLflow retries an unreachable database with exponential backoff for most of an hour.
        try:
            _psycopg2_connect(backend_uri).close()
        except Exception as exc:
            raise RuntimeError(f"MLflow backend store {backend_uri} is not reachable: {exc}") from exc
    artifact_dir = Path(artifact_dir).resolve()
    artifact_dir.mkdir(parents=True, exist_ok=True)
    log_file = Path(log_path) if log_path else artifact_dir.parent / f"mlflow-server-{uuid.uuid4().hex[:8]}.log"
    for attempt in range(1, attempts + 1):
        port = free_port()
        cmd = [
            *_mlflow_command(), "server",
            "--host", LOOPBACK, "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend_uri,
            "--serve-artifacts", "--artifacts-destination", artifact_dir.as_uri(),
        ]  # fmt: skip
        with open(log_file, "ab") as log:
            log.write(f"\n$ {shlex.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(),
                start_new_session=True,  # own process group: teardown kills uvicorn too
            )
        url = f"http://{LOOPBACK}:{port}"
        try:
            error = _wait_healthy(proc, url, timeout)
            if error is None:
                yield url
                return
            port_taken = "address already in use" in _tail(log_file, 80).lower()
            if not (port_taken and attempt < attempts):
                raise RuntimeError(f"{error}\n--- mlflow server log ({log_file}) ---\n{_tail(log_file, 60)}")
        finally:
            _kill_group(proc)


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"mlflow server exited with code {proc.returncode} before {url}/health answered"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=3) as resp:
                if resp.status == 200:
                    return None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    return f"mlflow server at {url} not healthy after {timeout:.0f} s"


@pytest.fixture
def mlflow_server(tmp_path_factory) -> Iterator[Callable[..., str]]:
    """Factory: ``mlflow_server(backend_uri=None, artifact_dir=None) -> "http://127.0.0.1:PORT"``.

    ``backend_uri`` defaults to a fresh sqlite file; pass ``fresh_postgres_db`` for PostgreSQL.
    Every server started through the factory is stopped when the test ends.
    """
    stack = contextlib.ExitStack()

    def start(backend_uri: str | None = None, artifact_dir: str | os.PathLike | None = None) -> str:
        workdir = tmp_path_factory.mktemp("mlflow_server")
        if backend_uri is None:
            backend_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        return stack.enter_context(
            mlflow_server_process(
                backend_uri,
                artifact_dir or workdir / "artifacts",
                log_path=workdir / "server.log",
            )
        )

    with stack:
        yield start


# --------------------------------------------------------------------------------------------
# Local HTTP server for image URLs


class QuietHandler(BaseHTTPRequestHandler):
    """Base for a test's HTTP routes: HTTP/1.1, no request log, and ``reply`` for a whole response.

    A subclass writes ``do_GET`` and answers with ``self.reply(...)``.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def reply(
        self, code: int, body: bytes, content_type: str = "image/jpeg", length: int | None = None, location: str | None = None
    ) -> None:
        """Status, Content-Type, Content-Length (``length`` may claim other than ``len(body)``),
        ``Location`` if given, then ``body``."""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client hung up, as it should for some routes
            pass


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) from a daemon thread; yields the base URL
    ``http://127.0.0.1:PORT`` and shuts the server down on exit."""
    httpd = ThreadingHTTPServer((LOOPBACK, 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{LOOPBACK}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
