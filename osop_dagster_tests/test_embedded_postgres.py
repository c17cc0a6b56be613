import contextlib
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from osop_dagster import _embedded_postgres as embedded
from osop_dagster._embedded_postgres import EmbeddedPostgres
from osop_dagster.errors import OsopConfigError, OsopDatabaseError

LOG = logging.getLogger("osop_dagster_tests.embedded_postgres")

# Bounds for the child processes these tests start; generous, they only cap a hang.
CHILD_START_TIMEOUT_SEC = 60
CHILD_EXIT_TIMEOUT_SEC = 30

CHILD = textwrap.dedent(
    """
    import logging, signal, sys, time
    from pathlib import Path
    from osop_dagster._embedded_postgres import EmbeddedPostgres

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with EmbeddedPostgres(Path(sys.argv[1]), log=logging.getLogger("child")) as url:
        print(url, flush=True)
        time.sleep(60)
    """
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under root the server runs as another OS user, which must traverse the parent folder.
    parent = Path(tempfile.mkdtemp(prefix="osop_test_embedded_"))
    parent.chmod(0o755)
    try:
        yield parent / "pg"
    finally:
        _stop_leftover(parent / "pg")
        shutil.rmtree(parent, ignore_errors=True)


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _server_running(data_dir: Path) -> bool:
    pid = _postmaster_pid(data_dir)
    try:
        return pid is not None and psutil.Process(pid).name() == "postgres"
    except psutil.Error:
        return False


def _stop_leftover(data_dir: Path) -> None:
    """Stop a server a failed test left behind, by the pid it recorded."""
    pid = _postmaster_pid(data_dir)
    if pid is not None and _server_running(data_dir):
        os.kill(pid, signal.SIGTERM)
        psutil.Process(pid).wait(CHILD_EXIT_TIMEOUT_SEC)


def _query(url: str, statement: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement)
        row = cursor.fetchone() if cursor.description else None
    return row[0] if row else None


@contextlib.contextmanager
def _child_server(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child process holding an embedded server on ``data_dir``; it is reaped on exit."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            if not selector.select(CHILD_START_TIMEOUT_SEC):
                pytest.fail(f"The child reported no URL within {CHILD_START_TIMEOUT_SEC} s.")
        url = child.stdout.readline().strip()
        if not url:
            pytest.fail("The child exited before reporting a URL.")
        yield child, url
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(CHILD_EXIT_TIMEOUT_SEC)
        child.stdout.close()


def test_start_connect_and_stop(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, database="osop_test_embedded", log=LOG)

    with server as url:
        assert _query(url, "SELECT current_database()") == "osop_test_embedded"
        assert url.startswith("postgresql://postgres:@/osop_test_embedded?host=")
        assert server.initialized and not server.adopted
        assert _server_running(data_dir)

    assert not _server_running(data_dir)
    assert server.url is None
    assert server.start_seconds is not None and server.stop_seconds is not None


def test_restart_reuses_the_data_folder(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir, log=LOG) as url:
        _query(url, "CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")

    again = EmbeddedPostgres(data_dir, log=LOG)
    with again as url:
        assert _query(url, "SELECT id FROM kept") == 7
        assert not again.initialized

    assert not _server_running(data_dir)


def test_stop_is_idempotent(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, log=LOG)
    server.start()

    server.stop()
    server.stop()

    assert not _server_running(data_dir)


def test_nested_users_in_one_process_share_the_server(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir, log=LOG) as outer_url:
        with EmbeddedPostgres(data_dir, log=LOG):
            pass
        assert _query(outer_url, "SELECT 1") == 1

    assert not _server_running(data_dir)


def test_stale_handle_of_a_dead_process_does_not_keep_the_server_running(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir, log=LOG):
        pass
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(finished.stdout)
    (data_dir / ".handle_pids.json").write_text(json.dumps([dead_pid]))

    with EmbeddedPostgres(data_dir, log=LOG):
        assert _server_running(data_dir)

    assert not _server_running(data_dir)


def test_server_left_by_a_killed_process_is_adopted_and_stopped(data_dir: Path) -> None:
    with _child_server(data_dir) as (child, child_url):
        child.kill()
        child.wait(CHILD_EXIT_TIMEOUT_SEC)
    assert _server_running(data_dir), "the server should outlive its killed parent"

    survivor = EmbeddedPostgres(data_dir, log=LOG)
    with survivor as url:
        assert survivor.adopted
        assert url == child_url
        assert _query(url, "SELECT 1") == 1

    assert not _server_running(data_dir)


def test_sigterm_unwinding_stops_the_server(data_dir: Path) -> None:
    with _child_server(data_dir) as (child, _):
        child.send_signal(signal.SIGTERM)

        assert child.wait(CHILD_EXIT_TIMEOUT_SEC) == 143
    assert not _server_running(data_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root widens parent folder permissions")
def test_data_folder_below_a_private_folder_is_refused(data_dir: Path) -> None:
    private = data_dir.parent / "private"
    private.mkdir(mode=0o700)

    with pytest.raises(OsopConfigError, match=r"is closed to other users"):
        EmbeddedPostgres(private / "pg", log=LOG).start()

    assert private.stat().st_mode & 0o777 == 0o700


def test_a_start_that_never_reports_ready_fails_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library's readiness wait has no bound of its own; the product imposes one."""
    release = threading.Event()

    class _Stuck:
        def get_server(self, data_dir: Path, cleanup_mode: str) -> None:
            release.wait(10)

    folder = tmp_path / "stuck"
    monkeypatch.setattr(embedded, "_pgserver", lambda: _Stuck())
    monkeypatch.setattr(embedded, "START_TIMEOUT_SEC", 0.3)
    monkeypatch.setattr(embedded, "_check_traversable", lambda data_dir: None)
    try:
        with pytest.raises(OsopDatabaseError, match=r"did not report ready within 0\.3 s"):
            EmbeddedPostgres(folder).start()
    finally:
        release.set()
