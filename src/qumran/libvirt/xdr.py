"""XDR (RFC 4506) encoders and decoders, as small composable codecs.

The generated protocol modules (``qumran.libvirt.protocol``) build one codec per type of
libvirt's ``.x`` files out of these. Every input is hostile: a decoder checks each length
against the type's bound *and* against the bytes left before it allocates anything, so
a packet can never make us build more than the packet itself holds (RFC 4506 section 4.10
and 4.11 give variable-length data a maximum; libvirt's ``.x`` files set one on nearly all).

rpcgen's conventions, which libvirt's wire format follows: ``char``/``short`` (signed or
not) travel as a 4-byte int, like ``int``; ``bool`` is an int that must be 0 or 1.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_F32 = struct.Struct(">f")


class XdrError(ValueError):
    """Bytes that are not a valid encoding of the expected type (or a value that cannot be
    encoded as it). The message says which bound was broken, never echoes the data."""


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


# The zero bytes that pad n bytes of data to a multiple of 4, by n % 4 (made once: the
# encoders append them for every string and opaque of every reply).
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")


class Reader:
    """A cursor over one received payload."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data = memoryview(data)
        self.pos = pos

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        if n > self.left:
            raise XdrError(f"truncated: {n} bytes wanted, {self.left} left")
        view = self.data[self.pos : self.pos + n]
        self.pos += n
        return view

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def i32(self) -> int:
        value: int = _I32.unpack(self.take(4))[0]
        return value

    def padded(self, n: int) -> bytes:
        """``n`` bytes of opaque data and the zero bytes that pad it to 4."""
        if n + _pad(n) > self.left:
            raise XdrError(f"truncated: {n} bytes of data announced, {self.left} left")
        data = bytes(self.take(n))
        self.take(_pad(n))  # RFC 4506 says zero; rpcgen does not check, nor do we
        return data

    def done(self) -> None:
        if self.left:
            raise XdrError(f"{self.left} bytes left over after the payload")


class Codec(Generic[T]):
    """Encodes values of one XDR type into a bytearray and decodes them from a Reader."""

    def encode(self, out: bytearray, value: T) -> None:
        raise NotImplementedError

    def decode(self, r: Reader) -> T:
        raise NotImplementedError

    # The fewest bytes one value takes: bounds the count of an array before decoding it.
    min_size = 4

    def pack(self, value: T) -> bytes:
        out = bytearray()
        self.encode(out, value)
        return bytes(out)

    def unpack(self, data: bytes | memoryview) -> T:
        r = Reader(data)
        value = self.decode(r)
        r.done()
        return value


class _Int(Codec[int]):
    def __init__(self, fmt: struct.Struct, lo: int, hi: int, name: str) -> None:
        self.fmt, self.lo, self.hi, self.name = fmt, lo, hi, name
        self.min_size = fmt.size

    def encode(self, out: bytearray, value: int) -> None:
        try:  # struct checks the range itself, at no cost when it fits
            out += self.fmt.pack(value)
        except struct.error:
            raise XdrError(f"{value} does not fit an XDR {self.name}") from None

    def decode(self, r: Reader) -> int:
        value: int = self.fmt.unpack(r.take(self.fmt.size))[0]
        return value


INT = _Int(_I32, -(2**31), 2**31 - 1, "int")
UINT = _Int(_U32, 0, 2**32 - 1, "unsigned int")
HYPER = _Int(_I64, -(2**63), 2**63 - 1, "hyper")
UHYPER = _Int(_U64, 0, 2**64 - 1, "unsigned hyper")


class _Bool(Codec[bool]):
    def encode(self, out: bytearray, value: bool) -> None:
        out += _U32.pack(1 if value else 0)

    def decode(self, r: Reader) -> bool:
        value = r.u32()
        if value > 1:
            raise XdrError(f"a bool must be 0 or 1, got {value}")
        return value == 1


BOOL = _Bool()


class _Float(Codec[float]):
    def __init__(self, fmt: struct.Struct) -> None:
        self.fmt = fmt
        self.min_size = fmt.size

    def encode(self, out: bytearray, value: float) -> None:
        out += self.fmt.pack(value)

    def decode(self, r: Reader) -> float:
        value: float = self.fmt.unpack(r.take(self.fmt.size))[0]
        return value


DOUBLE = _Float(_F64)
FLOAT = _Float(_F32)


class _Void(Codec[None]):
    min_size = 0

    def encode(self, out: bytearray, value: None) -> None:
        pass

    def decode(self, r: Reader) -> None:
        return None


VOID = _Void()


class String(Codec[str]):
    """``string<max>``: a length, UTF-8 bytes, padding. (libvirt's strings are C strings:
    a NUL inside one is refused rather than cut short somewhere else.)"""

    def __init__(self, max_len: int | None = None) -> None:
        self.max_len = max_len

    def encode(self, out: bytearray, value: str) -> None:
        data = value.encode("utf-8")
        if self.max_len is not None and len(data) > self.max_len:
            raise XdrError(f"a string of {len(data)} bytes is over its limit of {self.max_len}")
        out += _U32.pack(len(data))
        out += data
        out += _PADDING[len(data) & 3]

    def decode(self, r: Reader) -> str:
        n = r.u32()
        if self.max_len is not None and n > self.max_len:
            raise XdrError(f"a string of {n} bytes is over its limit of {self.max_len}")
        data = r.padded(n)
        if b"\0" in data:
            raise XdrError("a string holds a NUL byte")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise XdrError("a string is not valid UTF-8") from None


class Opaque(Codec[bytes]):
    """``opaque<max>`` (variable) or ``opaque[n]`` (``fixed``)."""

    def __init__(self, max_len: int | None = None, *, fixed: bool = False) -> None:
        self.max_len = max_len
        self.fixed = fixed
        if fixed:
            assert max_len is not None
            self.min_size = max_len + _pad(max_len)

    def encode(self, out: bytearray, value: bytes) -> None:
        n = len(value)
        if self.fixed and n != self.max_len:
            raise XdrError(f"opaque[{self.max_len}] given {n} bytes")
        if self.max_len is not None and n > self.max_len:
            raise XdrError(f"{n} bytes of opaque data are over the limit of {self.max_len}")
        if not self.fixed:
            out += _U32.pack(n)
        out += value
        out += _PADDING[n & 3]

    def decode(self, r: Reader) -> bytes:
        if self.fixed:
            assert self.max_len is not None
            return r.padded(self.max_len)
        n = r.u32()
        if self.max_len is not None and n > self.max_len:
            raise XdrError(f"{n} bytes of opaque data are over the limit of {self.max_len}")
        return r.padded(n)


class Array(Codec[list[T]]):
    """``T x<max>`` (variable, a count first) or ``T x[n]`` (``fixed``)."""

    def __init__(self, elem: Codec[T], max_len: int | None = None, *, fixed: bool = False) -> None:
        self.elem = elem
        self.max_len = max_len
        self.fixed = fixed
        if fixed:
            assert max_len is not None
            self.min_size = max_len * elem.min_size

    def encode(self, out: bytearray, value: Sequence[T]) -> None:
        n = len(value)
        if self.fixed and n != self.max_len:
            raise XdrError(f"an array of {self.max_len} given {n} elements")
        if self.max_len is not None and n > self.max_len:
            raise XdrError(f"an array of {n} elements is over its limit of {self.max_len}")
        if not self.fixed:
            out += _U32.pack(n)
        encode = self.elem.encode
        for item in value:
            encode(out, item)

    def decode(self, r: Reader) -> list[T]:
        n = self.max_len if self.fixed else r.u32()
        assert n is not None
        if self.max_len is not None and n > self.max_len:
            raise XdrError(f"an array of {n} elements is over its limit of {self.max_len}")
        # Before a single element is made: could the bytes left hold that many?
        if n * self.elem.min_size > r.left:
            raise XdrError(f"truncated: an array of {n} elements in {r.left} bytes")
        return [self.elem.decode(r) for _ in range(n)]


class Optional(Codec[T | None]):
    """``T *x``: a bool saying whether a value follows."""

    def __init__(self, elem: Codec[T]) -> None:
        self.elem = elem

    def encode(self, out: bytearray, value: T | None) -> None:
        if value is None:
            out += _U32.pack(0)
        else:
            out += _U32.pack(1)
            self.elem.encode(out, value)

    def decode(self, r: Reader) -> T | None:
        return self.elem.decode(r) if BOOL.decode(r) else None


class Struct(Codec[T]):
    """A struct, as the NamedTuple class ``cls`` whose fields are in wire order."""

    def __init__(self, cls: Callable[..., T], fields: Sequence[Codec[Any]]) -> None:
        self.cls = cls
        self.fields = tuple(fields)
        self.min_size = sum(f.min_size for f in self.fields)

    def encode(self, out: bytearray, value: T) -> None:
        for codec, item in zip(self.fields, value, strict=True):  # type: ignore[call-overload]
            codec.encode(out, item)

    def decode(self, r: Reader) -> T:
        return self.cls(*[codec.decode(r) for codec in self.fields])


class UnionValue(NamedTuple):
    """A discriminated union's value: the discriminant, and the arm's value (None: void)."""

    discriminant: int
    value: Any


class Union(Codec[UnionValue]):
    def __init__(
        self,
        disc: Codec[int],
        arms: dict[int, Codec[Any]],
        default: Codec[Any] | None = None,
    ) -> None:
        self.disc = disc
        self.arms = arms
        self.default = default

    def _arm(self, discriminant: int) -> Codec[Any]:
        arm = self.arms.get(discriminant, self.default)
        if arm is None:
            raise XdrError(f"no union arm for discriminant {discriminant}")
        return arm

    def encode(self, out: bytearray, value: UnionValue) -> None:
        self.disc.encode(out, value.discriminant)
        self._arm(value.discriminant).encode(out, value.value)

    def decode(self, r: Reader) -> UnionValue:
        discriminant = self.disc.decode(r)
        return UnionValue(discriminant, self._arm(discriminant).decode(r))


class Lazy(Codec[T]):
    """A codec named before it is defined (a type that refers to a later one)."""

    min_size = 0  # unknown when made: never too high

    def __init__(self, get: Callable[[], Codec[T]]) -> None:
        self.get = get

    def encode(self, out: bytearray, value: T) -> None:
        self.get().encode(out, value)

    def decode(self, r: Reader) -> T:
        return self.get().decode(r)
