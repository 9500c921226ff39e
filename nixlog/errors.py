"""The one exception tree of nixlog.

Every error a user can cause or meet in the field is a ``NixlogError`` subclass carrying the process
exit code (ARCHITECTURE.md: Errors and exit codes). The CLI turns them into one ``Error: ...`` line;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

# Exit codes (ARCHITECTURE.md: Errors and exit codes); sysexits.h values where one fits.
EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_DEVICE_UNREACHABLE = 69  # EX_UNAVAILABLE
EXIT_DATABASE = 74  # EX_IOERR
EXIT_API_TEMPORARY = 75  # EX_TEMPFAIL
EXIT_CONFIG = 78  # EX_CONFIG
EXIT_INTERRUPTED = 130


class NixlogError(Exception):
    """Base of every error nixlog reports to a user; ``exit_code`` is the process exit code."""

    exit_code: int = EXIT_PARTIAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(NixlogError):
    """A command-line argument that cannot be used (bad ``--since``, bad unit range...)."""

    exit_code = EXIT_USAGE


class ConfigError(NixlogError):
    """An invalid or missing configuration; the message names the file and the key path."""

    exit_code = EXIT_CONFIG


class DeviceError(NixlogError):
    """The Modbus device or port cannot be reached at all."""

    exit_code = EXIT_DEVICE_UNREACHABLE


class DatabaseError(NixlogError):
    """The database cannot be opened, read or written (locked, damaged, disk full)."""

    exit_code = EXIT_DATABASE


class ApiError(NixlogError):
    """The HTTP API is unreachable or answered with a temporary failure."""

    exit_code = EXIT_API_TEMPORARY
