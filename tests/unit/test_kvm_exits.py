"""Decoding kvm_run into typed exits, on a plain buffer laid out like the kernel's."""

from __future__ import annotations

import struct

from qumran.kvm import structs as s
from qumran.kvm.constants import ExitReason
from qumran.kvm.exits import (
    FailEntry,
    InternalErrorExit,
    Interrupted,
    IoIn,
    IoOut,
    MmioWrite,
    SystemEventExit,
    TripleFault,
    Unhandled,
    decode_exit,
)

PAGE = 4096


def _page(reason: int) -> tuple[bytearray, s.kvm_run]:
    page = bytearray(PAGE)
    run = s.kvm_run.from_buffer(page)
    run.exit_reason = reason
    return page, run


def test_port_output_carries_its_bytes() -> None:
    page, run = _page(ExitReason.IO)
    run.io.direction, run.io.size, run.io.port, run.io.count = 1, 1, 0x3F8, 3
    run.io.data_offset = 0x1000 - 16
    page[0x1000 - 16 : 0x1000 - 13] = b"abc"
    assert decode_exit(run, page) == IoOut(0x3F8, 1, 3, b"abc")


def test_port_input_points_at_the_data_slot() -> None:
    page, run = _page(ExitReason.IO)
    run.io.direction, run.io.size, run.io.port, run.io.count = 0, 2, 0x71, 1
    run.io.data_offset = 512
    assert decode_exit(run, page) == IoIn(0x71, 2, 1, 512)


def test_mmio_write_is_truncated_to_its_length() -> None:
    page, run = _page(ExitReason.MMIO)
    run.mmio.phys_addr = 0xFEE00000
    run.mmio.len = 4
    run.mmio.is_write = 1
    for i, b in enumerate(b"\x01\x02\x03\x04\x05\x06\x07\x08"):
        run.mmio.data[i] = b
    assert decode_exit(run, page) == MmioWrite(0xFEE00000, b"\x01\x02\x03\x04")


def test_simple_exits() -> None:
    for reason, expected in [
        (ExitReason.INTR, Interrupted()),
        (ExitReason.SHUTDOWN, TripleFault()),
        (99, Unhandled(99)),
        (ExitReason.UNKNOWN, Unhandled(0, 0)),
    ]:
        page, run = _page(reason)
        assert decode_exit(run, page) == expected


def test_internal_error_clamps_a_hostile_ndata() -> None:
    page, run = _page(ExitReason.INTERNAL_ERROR)
    run.internal.suberror = 1
    run.internal.ndata = 1000
    exit_ = decode_exit(run, page)
    assert isinstance(exit_, InternalErrorExit) and len(exit_.data) == 16


def test_system_event_and_fail_entry() -> None:
    page, run = _page(ExitReason.SYSTEM_EVENT)
    struct.pack_into("<I", page, 32, 2)
    assert decode_exit(run, page) == SystemEventExit(2)
    page, run = _page(ExitReason.FAIL_ENTRY)
    run.fail_entry.hardware_entry_failure_reason = 0x80000021
    run.fail_entry.cpu = 1
    assert decode_exit(run, page) == FailEntry(0x80000021, 1)


def test_constant_names_for_messages() -> None:
    from qumran.kvm.constants import Cap, ExitReason, InternalError

    assert ExitReason.name_of(ExitReason.IO) == "IO" and ExitReason.IO == 2
    assert Cap.name_of(136) == "IMMEDIATE_EXIT"
    assert InternalError.name_of(99) == "99"  # not in the table: the number itself
