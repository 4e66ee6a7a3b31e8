"""The XDR codec and the modules generated from libvirt's .x files, against hostile bytes."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qumran.libvirt import gen, packet, xdr
from qumran.libvirt.protocol import keepalive, remote, virnet


def test_the_committed_modules_are_what_the_generator_makes() -> None:
    for src in gen.SOURCES:
        committed = (gen.HERE / f"{src.module}.py").read_text()
        assert gen.generate(src) == committed, f"run python -m qumran.libvirt.gen ({src.module})"


def test_procedure_numbers_are_libvirts() -> None:
    # Numbers from the .x files, which libvirt never renumbers.
    assert remote.REMOTE_PROGRAM == 0x20008086
    assert keepalive.KEEPALIVE_PROGRAM == 0x6B656570
    assert remote.PROCEDURES[1].name == "CONNECT_OPEN"
    assert remote.PROCEDURES[273].name == "CONNECT_LIST_ALL_DOMAINS"
    get_info = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_GET_INFO]
    assert get_info.ret is remote.xdr_remote_domain_get_info_ret
    assert remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE].args is (
        remote.xdr_remote_domain_event_callback_lifecycle_msg
    )
    assert len(remote.PROCEDURES) == 443
    assert virnet.VIR_NET_MESSAGE_MAX == 32 << 20


def test_rpcgen_encodings() -> None:
    # char and short travel as 4-byte ints; strings and opaque data are padded to 4.
    info = remote.remote_domain_get_info_ret(state=1, maxMem=2, memory=3, nrVirtCpu=4, cpuTime=5)
    data = remote.xdr_remote_domain_get_info_ret.pack(info)
    assert data == struct.pack(">IQQIQ", 1, 2, 3, 4, 5)
    assert remote.xdr_remote_domain_get_info_ret.unpack(data) == info
    assert xdr.String(10).pack("abcde") == b"\0\0\0\x05abcde\0\0\0"
    assert remote.xdr_remote_string.pack(None) == b"\0\0\0\0"
    value = remote.remote_typed_param("f", xdr.UnionValue(remote.VIR_TYPED_PARAM_STRING, "s"))
    assert remote.xdr_remote_typed_param.unpack(remote.xdr_remote_typed_param.pack(value)) == value


def test_a_count_larger_than_the_bound_is_refused_before_any_allocation() -> None:
    codec = remote.xdr_remote_connect_list_all_domains_ret
    huge = struct.pack(">I", 0xFFFFFFFF)
    with pytest.raises(xdr.XdrError, match="over its limit"):
        codec.unpack(huge)
    # Within the bound, but more than the bytes left could hold.
    with pytest.raises(xdr.XdrError, match="truncated"):
        codec.unpack(struct.pack(">I", 16000) + b"\0" * 64)


def test_strings_are_bounded_checked_and_utf8() -> None:
    with pytest.raises(xdr.XdrError, match="over its limit"):
        xdr.String(4).unpack(struct.pack(">I", 5) + b"abcde\0\0\0")
    with pytest.raises(xdr.XdrError, match="truncated"):
        remote.xdr_remote_nonnull_string.unpack(struct.pack(">I", 4_000_000) + b"ab")
    with pytest.raises(xdr.XdrError, match="NUL"):
        xdr.String().unpack(struct.pack(">I", 3) + b"a\0b\0")
    with pytest.raises(xdr.XdrError, match="UTF-8"):
        xdr.String().unpack(struct.pack(">I", 1) + b"\xff\0\0\0")


def test_bool_union_and_leftovers() -> None:
    with pytest.raises(xdr.XdrError, match="0 or 1"):
        remote.xdr_remote_string.unpack(struct.pack(">I", 2))
    with pytest.raises(xdr.XdrError, match="no union arm"):
        remote.xdr_remote_typed_param_value.unpack(struct.pack(">I", 99))
    with pytest.raises(xdr.XdrError, match="left over"):
        xdr.INT.unpack(b"\0\0\0\0\0")


def test_values_that_do_not_fit_are_not_encoded() -> None:
    with pytest.raises(xdr.XdrError):
        xdr.UINT.pack(-1)
    with pytest.raises(xdr.XdrError):
        xdr.Opaque(16, fixed=True).pack(b"short")


@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_xdr_error(data: bytes) -> None:
    # Every argument struct of the procedures qumrand serves: never another exception.
    for proc in (1, 16, 23, 273, 212, 201, 350):
        codec = remote.PROCEDURES[proc].args
        assert codec is not None
        with contextlib.suppress(xdr.XdrError):
            codec.unpack(data)


def test_packet_length_bounds() -> None:
    assert packet.packet_length(struct.pack(">I", 28)) == 24
    with pytest.raises(packet.PacketError, match="shorter"):
        packet.packet_length(struct.pack(">I", 27))
    with pytest.raises(packet.PacketError, match="over libvirt's limit"):
        packet.packet_length(struct.pack(">I", (32 << 20) + 5))
    assert packet.packet_length(struct.pack(">I", (32 << 20) + 4)) == 32 << 20


def test_packet_header_is_checked_whole() -> None:
    good = packet.Header(remote.REMOTE_PROGRAM, 1, 1, packet.CALL, 7, packet.OK)
    body = packet.build(good, b"xyzw")[4:]
    assert packet.parse(body)[0] == good
    bad_type = struct.pack(">IIiiIi", remote.REMOTE_PROGRAM, 1, 1, 42, 7, 0)
    with pytest.raises(packet.PacketError, match="type"):
        packet.parse(bad_type)
    bad_status = struct.pack(">IIiiIi", remote.REMOTE_PROGRAM, 1, 1, 0, 7, 9)
    with pytest.raises(packet.PacketError, match="status"):
        packet.parse(bad_status)
