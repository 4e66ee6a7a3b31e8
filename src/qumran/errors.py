"""The root of Qumran's exception tree.

Every error a person can see derives from :class:`QumranError`. Each carries a stable
``code`` (used on the wire by the API and by ``--json`` output) and a message that says
what went wrong, where, and how to fix it. Lower layers raise their own subclasses
(``qumran.kvm.errors``, ``qumran.vmm.errors``); the API maps codes to HTTP status.
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: the CLI's fast path must not import typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar


class QumranError(Exception):
    """Base of every Qumran error."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidArgument(QumranError):
    """A request or definition is malformed or fails validation."""

    code = "invalid-argument"
    http_status = 400


class NotFound(QumranError):
    """The named object does not exist (or is not visible to the caller)."""

    code = "not-found"
    http_status = 404


class AlreadyExists(QumranError):
    """An object with that name already exists."""

    code = "already-exists"
    http_status = 409


class InvalidState(QumranError):
    """The operation does not apply in the object's current state."""

    code = "invalid-state"
    http_status = 409


class PermissionDenied(QumranError):
    """The caller may not act on this object."""

    code = "permission-denied"
    http_status = 403


class HypervisorError(QumranError):
    """The hypervisor process failed: it would not start, or its monitor failed."""

    code = "hypervisor-error"
    http_status = 500


class ConnectionFailed(QumranError):
    """The client could not reach the daemon."""

    code = "connection-failed"
    http_status = 503


class Timeout(QumranError):
    """An operation did not finish in the time allowed."""

    code = "timeout"
    http_status = 504


_BY_CODE: dict[str, type[QumranError]] = {
    cls.code: cls
    for cls in (
        QumranError,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        InvalidState,
        PermissionDenied,
        HypervisorError,
        ConnectionFailed,
        Timeout,
    )
}


def from_code(code: str, message: str) -> QumranError:
    """Rebuild an error received over the wire."""
    return _BY_CODE.get(code, QumranError)(message)
