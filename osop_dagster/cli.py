"""The ``osop-dagster`` command line.

Example:
    $ osop-dagster validate workflows/
    ok  workflows/rest-api-workflow.osop.yaml (6 nodes, 6 edges)

Exit status: 0 when every file is valid, 1 when one is not, 2 for a usage error.
Each subcommand is a function taking the parsed arguments and returning the exit status,
registered in :func:`build_parser`.
"""

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from osop_dagster.errors import OsopSpecError, SpecProblem
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
        except OsopSpecError as error:
            for problem in error.problems:
                print(problem)
            status = EXIT_INVALID
            continue
        print(f"ok  {target} ({len(workflow.nodes)} nodes, {len(workflow.edges)} edges)")
    return status


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
    try:
        return command(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
