"""The definition format: what is accepted, and the precise errors for what is not."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qumran.config.files import parse_definition, read_definition
from qumran.config.spec import DiskBoot, KernelBoot
from qumran.config.units import format_size, parse_size
from qumran.config.validate import validate_spec
from qumran.errors import InvalidArgument

GOOD = {"name": "demo", "memory": "256M", "boot": {"kernel": "/boot/vmlinuz"}}


def error_of(doc: object) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate_spec(doc)
    return info.value.message


def test_minimal_definition_gets_defaults() -> None:
    spec = validate_spec(GOOD)
    assert spec.memory == 256
    assert spec.vcpus == 1
    assert spec.hypervisor == "qemu"
    assert isinstance(spec.boot, KernelBoot)
    assert spec.boot.initrd is None


@pytest.mark.parametrize(
    ("given", "mib"), [(256, 256), ("256M", 256), ("1G", 1024), ("1GiB", 1024), ("512 MB", 512)]
)
def test_memory_units(given: object, mib: int) -> None:
    assert validate_spec({**GOOD, "memory": given}).memory == mib


def test_unknown_keys_are_rejected_with_their_path() -> None:
    assert "colour: unknown field" in error_of({**GOOD, "colour": "red"})
    assert "boot.kernal: unknown field" in error_of(
        {**GOOD, "boot": {"kernel": "/k", "kernal": "/k"}}
    )
    assert "disks[0].size: unknown field" in error_of(
        {**GOOD, "disks": [{"path": "/d.img", "size": 3}]}
    )


@pytest.mark.parametrize("name", ["a/b", "../etc", "", ".hidden", "x" * 64, "sp ace", "é"])
def test_names_unsafe_as_file_names_are_rejected(name: str) -> None:
    assert error_of({**GOOD, "name": name}).startswith("invalid definition: name:")


def test_every_error_is_reported_at_once() -> None:
    message = error_of({"name": "ok", "memory": "lots", "vcpus": 0, "boot": {"kernel": "rel"}})
    assert "memory: 'lots' is not a size" in message
    assert "vcpus: Input should be greater than or equal to 1" in message
    assert "boot.kernel: path must be absolute" in message


def test_missing_fields() -> None:
    message = error_of({"name": "x"})
    assert "memory: required field is missing" in message
    assert "boot: required field is missing" in message


def test_disk_boot_needs_the_disk() -> None:
    assert "boot.disk is 0 but only 0 disk(s)" in error_of({**GOOD, "boot": {"disk": 0}})
    spec = validate_spec({**GOOD, "boot": {"disk": 0}, "disks": [{"path": "/vm.img"}]})
    assert isinstance(spec.boot, DiskBoot)


def test_mac_addresses() -> None:
    assert "nics[0].mac: 'zz' is not a MAC" in error_of({**GOOD, "nics": [{"mac": "zz"}]})
    assert "multicast" in error_of({**GOOD, "nics": [{"mac": "01:00:5e:00:00:01"}]})
    spec = validate_spec({**GOOD, "nics": [{"mac": "52:54:00:AB:CD:EF"}]})
    assert spec.nics[0].mac == "52:54:00:ab:cd:ef"


def test_too_little_memory() -> None:
    assert "at least 16 MiB" in error_of({**GOOD, "memory": "8M"})


def test_not_a_mapping() -> None:
    assert "mapping" in error_of(["name", "demo"])


def test_yaml_errors_name_the_line() -> None:
    with pytest.raises(InvalidArgument, match=r"vm.yaml: invalid YAML at line 2"):
        parse_definition("name: a\nmemory: : 3\nvcpus: 1\n", source="vm.yaml")


def test_toml_files(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    path.write_text('name = "t"\nmemory = "128M"\n[boot]\nkernel = "vmlinuz"\n')
    doc = read_definition(path)
    assert doc["boot"]["kernel"] == str(tmp_path / "vmlinuz")  # relative to the file
    assert validate_spec(doc).memory == 128


def test_paths_resolve_against_the_file_and_home(tmp_path: Path) -> None:
    path = tmp_path / "vm.yaml"
    path.write_text("name: t\nmemory: 64\nboot: {kernel: ~/k, initrd: i.img}\ndisks: [{path: d}]\n")
    doc = read_definition(path)
    assert doc["boot"]["kernel"] == str(Path.home() / "k")
    assert doc["boot"]["initrd"] == str(tmp_path / "i.img")
    assert doc["disks"][0]["path"] == str(tmp_path / "d")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_definition(tmp_path / "missing.yaml")


@given(st.integers(min_value=1, max_value=1 << 20))
def test_size_round_trip(mib: int) -> None:
    assert parse_size(format_size(mib << 20)) == mib << 20


@given(st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=8)))
def test_arbitrary_documents_never_crash(doc: dict[str, object]) -> None:
    with contextlib.suppress(InvalidArgument):
        validate_spec(doc)
