"""Running the reference API in this process: seed the file, bind 127.0.0.1, serve."""

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Final

import uvicorn

from osop_reference_api.app import ServiceConfig, create_app
from osop_reference_api.faults import bind_connection
from osop_reference_api.store import RecordStore

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpProtocol
except ImportError:  # httptools is optional for uvicorn; h11 always comes with it
    from uvicorn.protocols.http.h11_impl import (  # type: ignore[assignment]
        H11Protocol as _HttpProtocol,
    )

logger = logging.getLogger("osop_reference_api")

LOOPBACK_HOST: Final = "127.0.0.1"


def prepare_store(config: ServiceConfig, *, fresh: bool) -> bool:
    """Seed the database file unless it already holds the configured data set.

    Args:
        config: Names the file, the size and the seed.
        fresh: Seed even when the file already holds that data set (dropping its changes).

    Returns:
        Whether the file was seeded.
    """
    with RecordStore(config.db_path) as store:
        if not fresh and store.dataset() == (config.records, config.seed):
            logger.info(
                "Reusing %d records (seed %d) in %s.", config.records, config.seed, config.db_path
            )
            return False
        started = time.perf_counter()
        store.seed(config.records, config.seed)
        logger.info(
            "Seeded %d records (seed %d) in %s in %.2f s.",
            config.records,
            config.seed,
            config.db_path,
            time.perf_counter() - started,
        )
        return True


class _ConnectionAwareProtocol(_HttpProtocol):
    """uvicorn's HTTP protocol, letting each request reach its own connection.

    ASGI gives an application no handle on the socket, yet the ``reset`` fault switch must drop
    the connection without any answer; so each connection runs the app wrapped with its transport.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = bind_connection(self.app, transport)


def bind_loopback(port: int, host: str = LOOPBACK_HOST) -> socket.socket:
    """Open a listening TCP socket on 127.0.0.1; port 0 picks a free port.

    Raises:
        ValueError: ``host`` is not ``127.0.0.1``; the service never listens elsewhere.
    """
    if host != LOOPBACK_HOST:
        raise ValueError(
            f"The reference API listens on {LOOPBACK_HOST} only, got host {host!r}. "
            "It holds test credentials and must not be reachable from other machines."
        )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening before the server loop runs lets early clients wait in the backlog.
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    config: ServiceConfig,
    *,
    port: int = 0,
    host: str = LOOPBACK_HOST,
    fresh: bool = False,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Seed if needed, bind, then serve until SIGINT or SIGTERM.

    Args:
        config: The service configuration.
        port: TCP port on 127.0.0.1; 0 picks a free one.
        host: Must be ``127.0.0.1``.
        fresh: Reseed even when the file already holds the configured data set.
        announce: Called once with the base URL after the socket listens, before serving.
    """
    sock = bind_loopback(port, host)
    try:
        prepare_store(config, fresh=fresh)
        base_url = f"http://{host}:{sock.getsockname()[1]}"
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(config),
                http=_ConnectionAwareProtocol,
                log_level="warning",
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=3,
            )
        )
        if announce is not None:
            announce(base_url)
        logger.info("Serving on %s.", base_url)
        server.run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["LOOPBACK_HOST", "bind_loopback", "prepare_store", "serve"]
