"""A tiny AML encoder: the handful of terms Qumran's DSDT needs, as functions returning bytes.

Grammar references are to ACPI 6.4 chapter 20 "ACPI Machine Language (AML) Specification"
(20.2 "AML Grammar Definition"), resource descriptors to 6.4.2 "Small Resource Data Type".
"""

from __future__ import annotations

# 20.2.5.x opcodes
ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82  # after EXT_OP_PREFIX
# 20.2.2 name prefixes
ROOT_CHAR, PARENT_CHAR = 0x5C, 0x5E
DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x2E, 0x2F
_LEAD_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _LEAD_CHARS | set("0123456789")


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of ``body_len`` bytes (20.2.4): it counts its own bytes too."""
    if body_len + 1 < 0x40:
        return bytes((body_len + 1,))
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            head = (extra << 6) | (total & 0x0F)
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes((head,)) + rest
    raise ValueError(f"AML package too long: {body_len} bytes")


def name_seg(seg: str) -> bytes:
    """A NameSeg: 4 characters, lead not a digit, padded with '_' (20.2.2)."""
    seg = seg.ljust(4, "_")
    if len(seg) != 4 or seg[0] not in _LEAD_CHARS or not set(seg) <= _NAME_CHARS:
        raise ValueError(f"bad AML name segment {seg!r}")
    return seg.encode("ascii")


def name_string(path: str) -> bytes:
    """A NameString such as ``_S5``, ``\\_SB`` or ``\\_SB.COM1`` (20.2.2)."""
    prefix = b""
    while path.startswith(("\\", "^")):
        prefix += bytes((ROOT_CHAR if path[0] == "\\" else PARENT_CHAR,))
        path = path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if not segs:
        return prefix + bytes((ZERO_OP,))  # NullName
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes((DUAL_NAME_PREFIX,)) + b"".join(segs)
    return prefix + bytes((MULTI_NAME_PREFIX, len(segs))) + b"".join(segs)


def integer(value: int) -> bytes:
    """The shortest ComputationalData for an unsigned integer (20.2.3)."""
    if value == 0:
        return bytes((ZERO_OP,))
    if value == 1:
        return bytes((ONE_OP,))
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4), (QWORD_PREFIX, 8)):
        if value < 1 << (8 * size):
            return bytes((prefix,)) + value.to_bytes(size, "little")
    raise ValueError(f"AML integer out of range: {value}")


def string(text: str) -> bytes:
    """A String: ASCII characters 0x01-0x7F, NUL-terminated (20.2.3)."""
    data = text.encode("ascii")
    if 0 in data:
        raise ValueError("AML strings cannot contain NUL")
    return bytes((STRING_PREFIX,)) + data + b"\x00"


def eisa_id(text: str) -> int:
    """A compressed EISA id such as ``PNP0501`` (ACPI 6.4, 6.1.5 "_HID"): 3 letters packed
    in 5 bits each, then 4 hex digits, stored big-endian within the 32-bit integer."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"bad EISA id {text!r}")
    vendor = 0
    for ch in text[:3]:
        vendor = (vendor << 5) | (ord(ch) - 0x40)
    product = int(text[3:], 16)
    return int.from_bytes(vendor.to_bytes(2, "big") + product.to_bytes(2, "big"), "little")


def name(path: str, data: bytes) -> bytes:
    """DefName := NameOp NameString DataRefObject (20.2.5.1)."""
    return bytes((NAME_OP,)) + name_string(path) + data


def package(*elements: bytes) -> bytes:
    """DefPackage := PackageOp PkgLength NumElements PackageElementList (20.2.5.4)."""
    if len(elements) > 0xFF:
        raise ValueError("AML package has more than 255 elements")
    body = bytes((len(elements),)) + b"".join(elements)
    return bytes((PACKAGE_OP,)) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    """DefBuffer := BufferOp PkgLength BufferSize ByteList (20.2.5.4)."""
    body = integer(len(data)) + data
    return bytes((BUFFER_OP,)) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    """DefScope := ScopeOp PkgLength NameString TermList (20.2.5.1)."""
    body = name_string(path) + b"".join(terms)
    return bytes((SCOPE_OP,)) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    """DefDevice := DeviceOp PkgLength NameString TermList (20.2.5.2)."""
    body = name_string(path) + b"".join(terms)
    return bytes((EXT_OP_PREFIX, DEVICE_OP)) + pkg_length(len(body)) + body


# -- resource descriptors (ACPI 6.4, 6.4.2) ------------------------------------------------


def io_port(base: int, length: int, align: int = 1) -> bytes:
    """A fixed I/O Port Descriptor with 16-bit decode (6.4.2.5): min = max = base."""
    lo, hi = base & 0xFF, base >> 8
    return bytes((0x47, 0x01, lo, hi, lo, hi, align, length))


def irq(*irqs: int) -> bytes:
    """An IRQ Descriptor without flags (6.4.2.1): edge, active high, exclusive."""
    mask = 0
    for n in irqs:
        if not 0 <= n < 16:
            raise ValueError(f"ISA IRQ out of range: {n}")
        mask |= 1 << n
    return bytes((0x22,)) + mask.to_bytes(2, "little")


def resource_template(*descriptors: bytes) -> bytes:
    """A ResourceTemplate: the descriptors and an End Tag (6.4.2.9), in a Buffer.

    The End Tag's checksum byte is 0, which means "the resource data is treated as if the
    checksum operation succeeded".
    """
    return buffer(b"".join(descriptors) + bytes((0x79, 0x00)))
