"""The process exit codes, one place for the CLI, the docs and the tests."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    #: every job in scope succeeded (or --max-jobs was reached cleanly)
    OK = 0
    #: some job failed permanently, was left unfinished, or --max-failures tripped
    FAILED = 1
    #: usage error, bad manifest, missing or rejected API key
    USAGE = 2
    #: stopped on insufficient credits (wins over FAILED)
    CREDITS = 3
    #: another run holds the run directory
    LOCKED = 4
    SIGINT = 130
    SIGTERM = 143
