"""Errors as libvirt's clients expect them: a ``remote_error`` with libvirt's code.

A procedure raises :class:`RpcError` (or lets a :class:`QumranError` through, which is
translated here); the server sends it as the call's error reply. virsh prints the
message after ``error:``, and programs switch on the code (``VIR_ERR_NO_DOMAIN``...),
so the code must be libvirt's and the message must say what to do.
"""

from __future__ import annotations

from qumran.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidState,
    NotFound,
    PermissionDenied,
    QumranError,
    Timeout,
)
from qumran.libvirt import constants as c


class RpcError(Exception):
    """One error reply: libvirt's code, the part of libvirt it is said to come from, and
    the text (libvirt's own wording first, where there is one, then ours)."""

    def __init__(self, code: int, message: str, domain: int = c.VIR_FROM_REMOTE) -> None:
        super().__init__(message)
        self.code = code
        self.domain = domain
        self.message = message


def no_support(what: str) -> RpcError:
    # virsh treats VIR_ERR_NO_SUPPORT as "the driver cannot do it" and says so cleanly.
    return RpcError(
        c.VIR_ERR_NO_SUPPORT,
        f"this function is not supported by the connection driver: {what} "
        "(Qumran does not implement it)",
    )


def no_domain(what: str) -> RpcError:
    return RpcError(
        c.VIR_ERR_NO_DOMAIN, f"Domain not found: no domain with matching {what}", c.VIR_FROM_QEMU
    )


def from_qumran(exc: QumranError) -> RpcError:
    """Qumran's error tree, in libvirt's codes."""
    match exc:
        case NotFound():
            return RpcError(c.VIR_ERR_NO_DOMAIN, f"Domain not found: {exc.message}",
                            c.VIR_FROM_QEMU)  # fmt: skip
        case PermissionDenied():
            return RpcError(
                c.VIR_ERR_ACCESS_DENIED, f"access denied: {exc.message}", c.VIR_FROM_ACCESS
            )
        case InvalidState():
            return RpcError(
                c.VIR_ERR_OPERATION_INVALID,
                f"Requested operation is not valid: {exc.message}",
                c.VIR_FROM_QEMU,
            )
        case AlreadyExists():
            return RpcError(c.VIR_ERR_OPERATION_FAILED, f"operation failed: {exc.message}",
                            c.VIR_FROM_QEMU)  # fmt: skip
        case InvalidArgument():
            return RpcError(c.VIR_ERR_INVALID_ARG, f"invalid argument: {exc.message}",
                            c.VIR_FROM_DOMAIN)  # fmt: skip
        case Timeout():
            return RpcError(c.VIR_ERR_OPERATION_TIMEOUT, f"operation timed out: {exc.message}",
                            c.VIR_FROM_QEMU)  # fmt: skip
    return RpcError(c.VIR_ERR_OPERATION_FAILED, f"operation failed: {exc.message}", c.VIR_FROM_QEMU)
