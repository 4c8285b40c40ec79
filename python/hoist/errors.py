"""Exceptions of hoist: one class per exit code of the ``hoist`` command line.

Every exception carries the CLI's one-line message (``str(e)``) and its exit code
(``e.exit_code``), so a script can log and branch the way a shell script does with ``$?``.
"""

from __future__ import annotations


class HoistError(Exception):
    """Any hoist failure (exit code 1 when no more specific class fits)."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(HoistError, ValueError):
    """Arguments that cannot work: a bad reference, glob, option or combination (exit 2)."""

    exit_code = 2


class AuthError(HoistError, PermissionError):
    """The registry (or the Hub) refused the credentials, or asked for some (exit 3)."""

    exit_code = 3


class NotFoundError(HoistError, LookupError):
    """No such repository, tag, digest or file (exit 4)."""

    exit_code = 4


class NetworkError(HoistError, ConnectionError):
    """The registry could not be reached, or kept failing (exit 5). A pull resumes."""

    exit_code = 5


class VerifyError(HoistError):
    """Bytes that do not match their digest, or a folder that differs from its artifact
    (exit 6). Nothing unverified was placed."""

    exit_code = 6


class DiskError(HoistError, OSError):
    """The local disk failed: full, read-only, permissions (exit 7)."""

    exit_code = 7


class InvalidContentError(HoistError):
    """What the registry or the folder holds is malformed or hostile (exit 8)."""

    exit_code = 8


class SignatureError(HoistError):
    """A required model signature is missing, invalid or does not cover the model (exit 9).
    Nothing was placed."""

    exit_code = 9


_BY_CODE = {
    cls.exit_code: cls
    for cls in (
        UsageError,
        AuthError,
        NotFoundError,
        NetworkError,
        VerifyError,
        DiskError,
        InvalidContentError,
        SignatureError,
    )
}


def from_code(exit_code: int, message: str) -> HoistError:
    """The exception for a CLI exit code (``HoistError`` for codes without a class)."""
    cls = _BY_CODE.get(exit_code, HoistError)
    return cls(message, exit_code)
