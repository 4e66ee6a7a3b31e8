"""Linux ioctl request numbers, derived the way ``include/uapi/asm-generic/ioctl.h`` does.

A request number packs a direction, the size of the argument structure, a type byte and a
command number. Deriving it from the ctypes structure keeps the number and the layout from
drifting apart: a structure with the wrong size yields the wrong request, which the
kernel rejects with ENOTTY instead of reading garbage.
"""

from __future__ import annotations

import ctypes

_NRBITS = 8
_TYPEBITS = 8
_SIZEBITS = 14

_NRSHIFT = 0
_TYPESHIFT = _NRSHIFT + _NRBITS
_SIZESHIFT = _TYPESHIFT + _TYPEBITS
_DIRSHIFT = _SIZESHIFT + _SIZEBITS

NONE = 0
WRITE = 1  # userspace writes, the kernel reads
READ = 2  # the kernel writes, userspace reads

CType = type[ctypes.Structure] | type[ctypes._SimpleCData]  # type: ignore[type-arg]


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """Pack an ioctl request number (asm-generic/ioctl.h ``_IOC``)."""
    if not 0 <= size < (1 << _SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_SIZEBITS} bits")
    return (
        (direction << _DIRSHIFT) | (type_ << _TYPESHIFT) | (nr << _NRSHIFT) | (size << _SIZESHIFT)
    )


def io(type_: int, nr: int) -> int:
    """``_IO``: no argument structure (an integer argument, if any, is passed by value)."""
    return ioc(NONE, type_, nr, 0)


def ior(type_: int, nr: int, struct: CType) -> int:
    """``_IOR``: the kernel fills ``struct``."""
    return ioc(READ, type_, nr, ctypes.sizeof(struct))


def iow(type_: int, nr: int, struct: CType) -> int:
    """``_IOW``: the kernel reads ``struct``."""
    return ioc(WRITE, type_, nr, ctypes.sizeof(struct))


def iowr(type_: int, nr: int, struct: CType) -> int:
    """``_IOWR``: the kernel reads and updates ``struct``."""
    return ioc(READ | WRITE, type_, nr, ctypes.sizeof(struct))
