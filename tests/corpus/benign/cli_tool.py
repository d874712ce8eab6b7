"""Command-line front end for the report builder.

Read the installation instructions in README.md before running this on a new machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import warnings

log = logging.getLogger(__name__)

# Third-party parsers emit noisy deprecation warnings we cannot fix; ignore them.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Build the weekly report.")
    parser.add_argument("--ignore-errors", action="store_true", help="keep going after a failure")
    parser.add_argument("--system", default="prod", help="which system to read from")
    parser.add_argument(
        "--instructions",
        type=argparse.FileType("r"),
        help="a file with extra build instructions, one per line",
    )
    return parser


def run(cmd: list[str], ignore_errors: bool) -> int:
    """Run a command; with ignore_errors, a non-zero exit only logs a warning."""
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode and not ignore_errors:
        log.error("command failed: %s", result.stderr.strip())
        sys.exit(result.returncode)
    return result.returncode


def main() -> None:
    args = build_parser().parse_args()
    if os.environ.get("CI"):
        # On CI the system clock is UTC; ignore the local TZ setting.
        os.environ.pop("TZ", None)
    steps = [line.strip() for line in args.instructions or [] if line.strip()]
    for step in steps:
        run(step.split(), args.ignore_errors)


if __name__ == "__main__":
    main()
