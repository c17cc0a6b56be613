"""Running the reference API as a child process, for tests and demos."""

import ctypes
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import httpx

from osop_reference_api.app import ENV_CLIENT_ID, ENV_CLIENT_SECRET
from osop_reference_api.store import RecordStore

_ANNOUNCEMENT: Final = "listening on "
_PR_SET_PDEATHSIG: Final = 1
_LOG_TAIL_CHARS: Final = 2000


class ReferenceApiStartupError(RuntimeError):
    """The reference API child process did not come up, or exited early."""


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send SIGTERM to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved before fork: loading a library in the forked child of a threaded parent can
    # deadlock on locks another thread held.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent_pid = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would signal us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


class ReferenceApiProcess:
    """The reference API running as ``python -m osop_reference_api`` in a child process.

    The client secret reaches the child through its environment, never its arguments (which
    ``ps`` shows). On Linux the child receives SIGTERM if the thread that started it dies, so
    start it from a long-lived thread.

    Args:
        db_path: SQLite file of the data set.
        records: Size of the data set.
        seed: Seed of the data set.
        client_id: The OAuth client the service accepts.
        client_secret: Its secret; a random one when omitted.
        token_ttl: Access token lifetime, in seconds.
        max_batch_size: Most records per batch update.
        port: TCP port on 127.0.0.1; 0 picks a free one.
        fresh: Reseed even when the file already holds this data set.
        startup_timeout: Seconds to wait for the service to answer ``/health``; seeding counts.
        stop_timeout: Seconds to wait after SIGTERM before SIGKILL.
        log_path: Where the child's standard error goes; ``<db_path>.log`` by default.

    Example:
        >>> api = ReferenceApiProcess(tmp_path / "api.sqlite3", records=2000)  # doctest: +SKIP
        >>> with api:  # doctest: +SKIP
        ...     httpx.get(f"{api.base_url}/health").json()
        {'status': 'ok'}
    """

    def __init__(
        self,
        db_path: str | PathLike[str],
        *,
        records: int = 10_000,
        seed: int = 7,
        client_id: str = "osop-reference-client",
        client_secret: str | None = None,
        token_ttl: float = 3600.0,
        max_batch_size: int = 1000,
        port: int = 0,
        fresh: bool = True,
        startup_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        log_path: str | PathLike[str] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.records = records
        self.seed = seed
        self.client_id = client_id
        self._client_secret = client_secret or secrets.token_urlsafe(24)
        self.token_ttl = token_ttl
        self.max_batch_size = max_batch_size
        self.port = port
        self.fresh = fresh
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_path = Path(log_path) if log_path is not None else Path(f"{self.db_path}.log")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._base_url: str | None = None

    def __repr__(self) -> str:
        return f"ReferenceApiProcess(base_url={self._base_url!r}, db_path={str(self.db_path)!r})"

    @property
    def client_secret(self) -> str:
        """The client secret the child accepts."""
        return self._client_secret

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running service."""
        if self._base_url is None:
            raise ReferenceApiStartupError("The reference API is not running; call start().")
        return self._base_url

    @property
    def pid(self) -> int | None:
        """Process id of the child, while it runs."""
        return None if self._process is None else self._process.pid

    def open_store(self) -> RecordStore:
        """A new connection to the service's database file; close it when done."""
        return RecordStore(self.db_path)

    def command(self) -> list[str]:
        """The child's argument list (it holds no secret)."""
        command = [
            sys.executable,
            "-m",
            "osop_reference_api",
            "--port",
            str(self.port),
            "--records",
            str(self.records),
            "--seed",
            str(self.seed),
            "--db",
            str(self.db_path),
            "--token-ttl",
            str(self.token_ttl),
            "--max-batch-size",
            str(self.max_batch_size),
        ]
        return [*command, "--fresh"] if self.fresh else command

    def start(self) -> Self:
        """Start the child and wait until it answers ``/health``.

        Raises:
            ReferenceApiStartupError: It exited or stayed silent past ``startup_timeout``.
        """
        if self._process is not None:
            raise ReferenceApiStartupError("The reference API process is already running.")
        env = {
            **os.environ,
            ENV_CLIENT_ID: self.client_id,
            ENV_CLIENT_SECRET: self._client_secret,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            # The hook only calls prctl and getppid, both safe between fork and exec.
            preexec_fn=_parent_death_hook(),
        )
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._base_url = self._read_base_url(deadline)
            self._wait_healthy(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the child by its PID: SIGTERM, then SIGKILL after ``stop_timeout``."""
        process, self._process = self._process, None
        self._base_url = None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(self.stop_timeout)
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _read_base_url(self, deadline: float) -> str:
        process = self._process
        assert process is not None and process.stdout is not None
        received = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._startup_error(
                        f"did not announce its URL within {self.startup_timeout} s"
                    )
                if selector.select(min(remaining, 0.5)):
                    chunk = os.read(process.stdout.fileno(), 4096)
                    if not chunk:
                        raise self._startup_error("exited before announcing its URL")
                    received += chunk
        line = received.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not line.startswith(_ANNOUNCEMENT):
            raise self._startup_error(f"announced {line!r} instead of its URL")
        return line.removeprefix(_ANNOUNCEMENT)

    def _wait_healthy(self, deadline: float) -> None:
        url = f"{self.base_url}/health"
        while True:
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self._process is None or self._process.poll() is not None:
                raise self._startup_error("exited before answering /health")
            if time.monotonic() >= deadline:
                raise self._startup_error(f"did not answer {url} within {self.startup_timeout} s")
            time.sleep(0.05)

    def _startup_error(self, what: str) -> ReferenceApiStartupError:
        if self._log is not None:
            self._log.flush()
        try:
            tail = self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            tail = ""
        return ReferenceApiStartupError(
            f"The reference API ({' '.join(self.command())}) {what}. "
            f"End of its log {str(self.log_path)!r}:\n{tail}"
        )


__all__ = ["ReferenceApiProcess", "ReferenceApiStartupError"]
