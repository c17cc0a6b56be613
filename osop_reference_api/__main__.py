"""Command line: ``osop-reference-api`` (or ``python -m osop_reference_api``).

The first line on standard output is ``listening on http://127.0.0.1:PORT`` once the socket
listens, so a parent process can read the chosen port; logs go to standard error.

Example:
    export OSOP_REFERENCE_CLIENT_ID=demo OSOP_REFERENCE_CLIENT_SECRET=$(openssl rand -hex 16)
    osop-reference-api --port 8765 --records 10000 --seed 7 --db /tmp/api.sqlite3
"""

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from osop_reference_api._server import LOOPBACK_HOST, serve
from osop_reference_api.app import ENV_CLIENT_ID, ENV_CLIENT_SECRET, ServiceConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osop-reference-api",
        description="Serve a local stand-in for the example workflow's REST API on 127.0.0.1.",
    )
    parser.add_argument("--host", default=LOOPBACK_HOST, help="must be 127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--records", type=int, default=10_000, help="size of the data set")
    parser.add_argument("--seed", type=int, default=7, help="seed of the data set")
    parser.add_argument(
        "--db",
        type=Path,
        default=Path(tempfile.gettempdir()) / "osop-reference-api.sqlite3",
        help="SQLite file of the data set (kept between runs unless --fresh)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="reseed even when the file already holds this data set",
    )
    parser.add_argument("--client-id", default=None, help=f"default: ${ENV_CLIENT_ID}")
    parser.add_argument(
        "--client-secret",
        default=None,
        help=f"default: ${ENV_CLIENT_SECRET} (prefer the variable: arguments show in ps)",
    )
    parser.add_argument("--token-ttl", type=float, default=3600.0, help="token lifetime, seconds")
    parser.add_argument("--max-batch-size", type=int, default=1000)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, then serve until interrupted.

    Returns:
        The process exit status.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    client_id = args.client_id or os.environ.get(ENV_CLIENT_ID)
    client_secret = args.client_secret or os.environ.get(ENV_CLIENT_SECRET)
    if not client_id or not client_secret:
        parser.error(
            f"No client credentials: set {ENV_CLIENT_ID} and {ENV_CLIENT_SECRET} "
            "(or pass --client-id and --client-secret)."
        )
    if args.host != LOOPBACK_HOST:
        parser.error(f"--host must be {LOOPBACK_HOST}, got {args.host!r}; it listens locally only.")
    if args.records < 0 or args.token_ttl <= 0 or args.max_batch_size < 1:
        parser.error("--records must be 0 or more, --token-ttl and --max-batch-size positive.")

    config = ServiceConfig(
        db_path=str(args.db),
        client_id=client_id,
        client_secret=client_secret,
        records=args.records,
        seed=args.seed,
        token_ttl=args.token_ttl,
        max_batch_size=args.max_batch_size,
    )

    def announce(base_url: str) -> None:
        sys.stdout.write(f"listening on {base_url}\n")
        sys.stdout.flush()

    try:
        serve(config, port=args.port, host=args.host, fresh=args.fresh, announce=announce)
    except OSError as error:
        logging.getLogger("osop_reference_api").error(
            "Cannot listen on %s:%d: %s.", args.host, args.port, error.strerror
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
