"""The definition format: what is accepted, and the precise errors for what is not."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qumran.config.files import parse_definition, read_definition
from qumran.config.spec import DiskBoot, KernelBoot
from qumran.config.units import format_size, parse_size
from qumran.config.validate import validate_spec
from qumran.drivers.checks import check_memory, host_memory_mib
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


# --- bounds: every number, list, path and string in a definition ---------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "demo\n"}, "name: 'demo\\n' is not a valid name"),
        ({"memory": 1 << 43}, "memory: more than any host has; at most 16777216 MiB"),
        ({"memory": "8388608T"}, "memory: more than any host has"),  # 2^63 bytes
        ({"memory": 10**5000}, "memory: more than any host has"),
        ({"memory": "9" * 4300 + "M"}, "memory: a 4300-digit size is far too large"),
        ({"memory": -5}, "memory: -5 is negative"),
        ({"vcpus": 10**5000}, "vcpus: Input should be less than or equal to 64"),
        ({"disks": [{"path": "/d.img"}] * 17}, "disks: at most 16 entries, got 17"),
        ({"nics": [{}] * 9}, "nics: at most 8 entries, got 9"),
        ({"boot": {"disk": 16}, "disks": [{"path": "/d"}]}, "boot.disk: Input should be less"),
        ({"boot": {"kernel": "/k", "cmdline": "x" * 4097}}, "boot.cmdline: cmdline is 4097 bytes"),
        ({"boot": {"kernel": "/k", "cmdline": "a\0b"}}, "boot.cmdline: cmdline contains a NUL"),
        (
            {"boot": {"kernel": "/k" * 2048}},
            "boot.kernel: path is 4096 bytes long; the limit is 4095",
        ),
        ({"boot": {"kernel": "/" + "k" * 256}}, "boot.kernel: path has a 256-byte component"),
        ({"boot": {"kernel": "/k\0"}}, "boot.kernel: path contains a NUL character"),
        ({"boot": {"kernel": "/k\ud800"}}, "boot.kernel: path is not valid UTF-8 text"),
        ({"boot": {"kernel": ""}}, "boot.kernel: path is empty"),
        ({"boot": {"kernel": "/k", "initrd": "i"}}, "boot.initrd: path must be absolute, got 'i'"),
        ({"disks": [{"path": "/" + "é" * 128}]}, "disks[0].path: path has a 256-byte component"),
        ({"nics": [{"mac": "52:54:00:12:34:56\n"}]}, "nics[0].mac: '52:54:00:12:34:56\\n' is not"),
        ({"memory": "\u0661\u0662M"}, "memory: '\u0661\u0662M' is not a size"),  # Arabic-Indic
    ],
)
def test_bounds(fields: dict[str, object], message: str) -> None:
    assert error_of({**GOOD, **fields}).startswith(f"invalid definition: {message}")


def test_the_largest_accepted_values() -> None:
    longest = "".join("/" + "k" * 255 for _ in range(15)) + "/" + "k" * 254  # 4095 bytes
    spec = validate_spec(
        {
            **GOOD,
            "name": "n" * 63,
            "memory": "16T",
            "vcpus": 64,
            "boot": {"kernel": longest, "cmdline": "x" * 4096},
            "disks": [{"path": "/d"}] * 16,
            "nics": [{}] * 8,
        }
    )
    assert isinstance(spec.boot, KernelBoot) and len(str(spec.boot.kernel)) == 4095
    assert spec.memory == 16 << 20


def test_errors_never_echo_a_huge_value_and_are_capped() -> None:
    assert len(error_of({**GOOD, "name": "x" * 1_000_000})) < 300
    message = error_of({**GOOD, **{f"k{i}": 1 for i in range(1000)}})
    assert message.count("unknown field") == 10 and message.endswith("and 990 more errors")
    assert len(error_of({**GOOD, "k" * 100_000: 1})) < 300  # an unknown key is cut short too


# --- definition files: bounded, no aliases, no duplicate keys ------------------------


def parse_error(text: str, kind: str = "yaml") -> str:
    with pytest.raises(InvalidArgument) as info:
        parse_definition(text, kind=kind, source=f"vm.{kind}")
    return info.value.message


def billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_at_once() -> None:
    started = time.monotonic()
    message = parse_error(billion_laughs())
    assert time.monotonic() - started < 0.2
    assert message == (
        "vm.yaml: invalid YAML at line 1: anchors and aliases (& and *) are not allowed "
        "in a definition"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nboot: *k\n", "line 2: anchors and aliases"),
        ("name: a\nboot: &k {kernel: /k}\n", "line 2: anchors and aliases"),
        ("name: a\nmemory: 64\nname: b\n", "line 3: duplicate key 'name' (first at line 1)"),
        ("boot:\n  kernel: /a\n  kernel: /b\n", "line 3: duplicate key 'kernel' (first at line 2)"),
        ("a: " + "[" * 100_000 + "]" * 100_000, "line 1: nested more than 16 levels deep"),
        ("".join("  " * i + f"k{i}:\n" for i in range(40)), "line 16: nested more than 16"),
        ("memory: " + "9" * 4300 + "\n", "line 1: a 4300-character number is far too long"),
        ("name: a\n<<: {memory: 1}\n", "line 2: merge keys (<<) are not used"),
        ("name: !!binary aGVsbG8=\n", "the tag tag:yaml.org,2002:binary is not used"),
        ("name: !!python/object:os.system x\n", "is not used in a definition"),
        ("yes: 1\n", "line 1: key True is not a field name (quote it if it is one)"),
        ("name: a\n---\nname: b\n", "line 2: but found another document"),
    ],
)
def test_yaml_hazards_are_refused_with_their_line(text: str, message: str) -> None:
    assert message in parse_error(text)


def test_yaml_dates_stay_text() -> None:
    assert parse_definition("memory: 2024-01-01\n")["memory"] == "2024-01-01"
    assert "memory: '2024-01-01' is not a size" in error_of({**GOOD, "memory": "2024-01-01"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": "a", "name": "b"}', "vm.json: duplicate key 'name' in JSON"),
        ('{"memory": ' + "9" * 5000 + "}", "vm.json: a 5000-digit number is far too long"),
        ("[" * 100_000 + "]" * 100_000, "vm.json: invalid JSON: nested too deeply"),
        ('{"a": ' * 20 + "1" + "}" * 20, "vm.json: nested more than 16 levels deep"),
        ('{"name": "a",\n "memory": }', "vm.json: invalid JSON at line 2: Expecting value"),
    ],
)
def test_json_hazards(text: str, message: str) -> None:
    assert parse_error(text, "json").startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("memory = " + "9" * 5000, "vm.toml: invalid TOML: a number is far too long"),
        ("a = " + "[" * 5000 + "]" * 5000, "vm.toml: invalid TOML: nested too deeply"),
        ("a = " + "[" * 20 + "]" * 20, "vm.toml: nested more than 16 levels deep"),
        ('name = "a"\nname = "b"\n', "vm.toml: invalid TOML: Cannot overwrite a value"),
    ],
)
def test_toml_hazards(text: str, message: str) -> None:
    assert message in parse_error(text, "toml")


def test_toml_dates_stay_text() -> None:
    assert parse_definition("memory = 2024-01-01", kind="toml")["memory"] == "2024-01-01"


def test_json_files_are_read_like_yaml(tmp_path: Path) -> None:
    """A VM's definition as `qumran --json dominfo` shows it can be defined again."""
    spec = validate_spec({**GOOD, "disks": [{"path": "/d.img", "readonly": True}]})
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(spec.model_dump(mode="json"), indent="\t"))  # tabs, too
    assert validate_spec(read_definition(path)) == spec


def test_files_are_read_up_to_a_bound(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"^/dev/zero: larger than 1 MiB"):
        read_definition("/dev/zero")
    path = tmp_path / "vm.yaml"
    path.write_bytes(b"name: \xff\n")
    with pytest.raises(InvalidArgument, match="not a UTF-8 text file"):
        read_definition(path)


def test_memory_beyond_the_hosts_ram_needs_force() -> None:
    total = host_memory_mib()
    assert total is not None and total > 0
    spec = validate_spec({**GOOD, "memory": total + 1})
    with pytest.raises(InvalidArgument) as info:
        check_memory(spec)
    assert info.value.message == (
        f"memory: {total + 1} MiB is more than this host's {total} MiB of RAM; give less, "
        "or define with --force (POST /v1/vms?force=true) to allow it"
    )
    check_memory(spec, force=True)
    check_memory(validate_spec({**GOOD, "memory": total}))


def test_control_characters_in_yaml() -> None:
    assert parse_error("name: a\nmemory: \x08\n") == (
        "vm.yaml: invalid YAML at line 2: character U+0008 is not allowed"
    )
