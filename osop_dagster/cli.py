"""The ``osop-dagster`` command line.

Example:
    $ osop-dagster validate workflows/
    ok  workflows/rest-api-workflow.osop.yaml (6 nodes, 6 edges)
    $ osop-dagster demo
    $ osop-dagster ui

Exit status: 0 on success (every file valid, the run succeeded), 1 when a file is invalid or a
run failed, 2 for a usage error, 130 when interrupted.
Each subcommand is a function taking the parsed arguments and returning the exit status,
registered in :func:`build_parser`.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from osop_dagster import constants
from osop_dagster.compiler import RUNNABLE_NODE_TYPES, build_osop_assets
from osop_dagster.errors import OsopError, OsopSpecError, SpecProblem
from osop_dagster.loader import load_workflow, workflow_files

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2

Command = Callable[[argparse.Namespace], int]


def _expand(paths: Sequence[str]) -> list[Path | SpecProblem]:
    """Files to validate: each file as given, each folder as the workflow files inside it."""
    targets: list[Path | SpecProblem] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            targets.append(path)
            continue
        try:
            found = workflow_files(path)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            targets.append(SpecProblem(raw, None, "", f"the folder cannot be read ({reason})"))
            continue
        if not found:
            targets.append(
                SpecProblem(
                    raw,
                    None,
                    "",
                    "the folder holds no workflow file (*.osop.yaml, *.osop.yml, *.osop.json)",
                )
            )
        targets.extend(found)
    return targets


def validate(args: argparse.Namespace) -> int:
    """Validate workflow files and folders; print one line per valid file, problems otherwise."""
    status = EXIT_OK
    for target in _expand(args.paths):
        if isinstance(target, SpecProblem):
            print(target)
            status = EXIT_INVALID
            continue
        try:
            workflow = load_workflow(target)
            # Compiling checks what only running needs: the runtime vocabulary, cron triggers.
            compiled = build_osop_assets(workflow)
        except OsopSpecError as error:
            for problem in error.problems:
                print(problem)
            status = EXIT_INVALID
            continue
        print(f"ok  {target} ({len(workflow.nodes)} nodes, {len(workflow.edges)} edges)")
        for node_id, reason in compiled.not_runnable.items():
            if workflow.node(node_id).type in RUNNABLE_NODE_TYPES:
                print(f"    note: node {node_id!r} will not run: {reason}")
    return status


def demo(args: argparse.Namespace) -> int:
    """Run the example workflow end to end on embedded defaults and print a summary."""
    from osop_dagster._demo import require_project_dir, run_demo

    project_dir = require_project_dir(Path(args.project_dir).resolve())
    summary = run_demo(project_dir, records=args.records)

    figures = summary.figures
    rows = [
        ("records fetched", _figure(figures, "records_list", "record_count")),
        ("records selected", _figure(figures, "filtered_records", "record_count")),
        ("records updated", _figure(figures, "update_response", "updated_count")),
        ("records rejected", _figure(figures, "update_response", "rejected_count")),
        ("records verified", _figure(figures, "verification_result", "records_verified")),
        ("audit id", _figure(figures, "audit_id", "audit_id")),
        ("run id", summary.run_id),
        ("postgres", summary.postgres),
        ("time taken", f"{summary.seconds:.1f} s"),
    ]
    print()
    print("Run succeeded." if summary.success else f"Run failed: {summary.failure}")
    for label, value in rows:
        print(f"  {label:<17} {value}")
    print("Browse the lineage and this run with: osop-dagster ui")
    return EXIT_OK if summary.success else EXIT_INVALID


def _figure(figures: dict[str, dict[str, object]], asset: str, key: str) -> object:
    return figures.get(asset, {}).get(key, "-")


def ui(args: argparse.Namespace) -> int:
    """Serve the Dagster UI on 127.0.0.1 over the demo's instance until interrupted."""
    from osop_dagster._demo import require_project_dir
    from osop_dagster._local_stack import (
        STATE_DIR_NAME,
        instance_environment,
        local_postgres,
        patched_environ,
        reference_api,
    )

    project_dir = require_project_dir(Path(args.project_dir).resolve())
    state_dir = project_dir / STATE_DIR_NAME
    workflows = os.environ.get(constants.ENV_WORKFLOWS_DIR) or str(project_dir / "workflows")
    secret_refs = _secret_refs(Path(workflows))
    command = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(args.port)]
    command += ["-w", str(project_dir / "workspace.yaml")]

    with local_postgres(state_dir) as postgres:
        environment = instance_environment(project_dir, state_dir, postgres.url)
        environment[constants.ENV_WORKFLOWS_DIR] = workflows
        with (
            reference_api(state_dir, secret_refs, args.records) as api,
            patched_environ({**environment, **api.environment}),
        ):
            print(f"Dagster UI: http://127.0.0.1:{args.port} (reference API at {api.base_url})")
            print("Ctrl-C stops it.")
            # Its own session, so that stopping reaches the webserver, daemon and code servers
            # it starts; SIGINT restored, in case this process was started with it ignored.
            # Started from DAGSTER_HOME, where dagster.yaml is, so that Dagster does not warn about
            # the project's own copy in the working folder.
            server = subprocess.Popen(
                command,
                cwd=environment["DAGSTER_HOME"],
                start_new_session=True,
                preexec_fn=_default_sigint,
            )
            try:
                return server.wait()
            finally:
                _stop_group(server)


def _secret_refs(folder: Path) -> list[str]:
    refs: set[str] = set()
    for path in workflow_files(folder) if folder.is_dir() else []:
        try:
            workflow = load_workflow(path)
        except OsopSpecError:
            continue
        refs.update(
            n.security.secret_ref for n in workflow.nodes if n.security and n.security.secret_ref
        )
    return sorted(refs)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_group(process: subprocess.Popen[bytes], grace_sec: float = 30.0) -> None:
    """Stops a process started in its own session, and everything it started there."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_sec
    while _group_alive(process) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(process):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is None:
        return True
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a record count of 0 or more, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 1 to 65535, got {text!r}")
    return value


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds the stack, so every `finally` stops what this process started.
    raise SystemExit(128 + signum)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per command; each sets ``command``."""
    parser = argparse.ArgumentParser(
        prog="osop-dagster",
        description="Run OSOP workflow files as observable, recoverable Dagster pipelines.",
    )
    commands = parser.add_subparsers(dest="name", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "validate",
        help="check workflow files and report every problem with its line",
        description="Check workflow files; a folder stands for the workflow files inside it.",
    )
    check.add_argument("paths", nargs="+", metavar="FILE", help="workflow file or folder")
    check.set_defaults(command=validate)

    project = argparse.ArgumentParser(add_help=False)
    project.add_argument(
        "--project-dir",
        default=".",
        help="the osop_dagster project folder (default: the current folder)",
    )
    project.add_argument(
        "--records",
        type=_count,
        default=10_000,
        help="size of the reference API's data set (default: 10000)",
    )

    run_demo = commands.add_parser(
        "demo",
        parents=[project],
        help="run the example workflow end to end on embedded defaults",
        description=(
            "Start an embedded Postgres (unless OSOP_POSTGRES_URL is set) and the reference API, "
            "materialize every asset of workflows/rest-api-workflow.osop.yaml, print a summary "
            "and stop what was started."
        ),
    )
    run_demo.set_defaults(command=demo)

    serve = commands.add_parser(
        "ui",
        parents=[project],
        help="open the Dagster UI on 127.0.0.1 over the demo's instance",
        description="Run `dagster dev` on 127.0.0.1 over the instance `osop-dagster demo` uses.",
    )
    serve.add_argument("--port", type=_port, default=3000, help="TCP port (default: 3000)")
    serve.set_defaults(command=ui)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status instead of exiting."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits on --help (0) and on usage errors (2); callers get the status back.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command: Command = args.command
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        return command(args)
    except OsopError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
