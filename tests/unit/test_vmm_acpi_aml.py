"""The AML encoder emits the byte patterns of ACPI 6.4 chapter 20."""

from __future__ import annotations

import pytest

from qumran.vmm.acpi import aml


def decode_pkg_length(data: bytes) -> tuple[int, int]:
    """(total length, bytes used by the PkgLength itself), per 20.2.4."""
    extra = data[0] >> 6
    if extra == 0:
        return data[0] & 0x3F, 1
    value = data[0] & 0x0F
    for i in range(extra):
        value |= data[1 + i] << (4 + 8 * i)
    return value, 1 + extra


@pytest.mark.parametrize("body", [0, 1, 61, 62, 63, 64, 4000, 4093, 4094, 70_000, 1_048_571, 2**27])
def test_pkg_length_counts_itself_and_round_trips(body: int) -> None:
    encoded = aml.pkg_length(body)
    total, used = decode_pkg_length(encoded)
    assert used == len(encoded)
    assert total == body + len(encoded)


def test_pkg_length_too_long() -> None:
    with pytest.raises(ValueError):
        aml.pkg_length(2**28)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (5, "0a05"),
        (0x1234, "0b3412"),
        (0x0105D041, "0c41d00501"),
        (2**40, "0e0000000000010000"),
    ],
)
def test_integers_use_the_shortest_form(value: int, encoded: str) -> None:
    assert aml.integer(value).hex() == encoded


def test_names() -> None:
    assert aml.name_string("_S5") == b"_S5_"
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("\\_SB.COM1") == b"\\\x2e_SB_COM1"
    assert aml.name_string("A.B.C") == b"\x2f\x03A___B___C___"
    with pytest.raises(ValueError):
        aml.name_seg("1ABC")
    with pytest.raises(ValueError):
        aml.name_seg("TOOLONG")


def test_eisa_id_compression() -> None:
    assert aml.eisa_id("PNP0501") == 0x0105D041
    assert aml.eisa_id("PNP0C02") == 0x020CD041
    with pytest.raises(ValueError):
        aml.eisa_id("pnp0501")


def test_string_and_package() -> None:
    assert aml.string("ab") == b"\x0dab\x00"
    assert aml.package(aml.integer(5), aml.integer(0)) == bytes.fromhex("12 05 02 0a 05 00")


def test_resource_template_is_a_buffer_ending_in_an_end_tag() -> None:
    rt = aml.resource_template(aml.io_port(0x3F8, 8), aml.irq(4))
    body = bytes.fromhex("47 01 f8 03 f8 03 01 08  22 10 00  79 00")
    assert rt == bytes((0x11,)) + aml.pkg_length(2 + len(body)) + bytes((0x0A, len(body))) + body


def test_device_and_scope_wrap_their_terms() -> None:
    inner = aml.name("_UID", aml.integer(1))
    dev = aml.device("COM1", inner)
    assert dev[:2] == b"\x5b\x82"
    assert dev[3:7] == b"COM1" and dev.endswith(inner)
    assert aml.scope("\\_SB", dev)[0] == 0x10
