"""Properties of the definition parser and validator, for any input (hypothesis).

Whatever a user or a client sends, the answer is a spec or one InvalidArgument naming a
field path; never another exception. A valid spec survives every way it travels: the
daemon's JSON, a YAML file and a JSON file.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qumran.config.files import parse_definition
from qumran.config.spec import MAX_DISKS, MAX_MEMORY_MIB, MAX_NICS, MAX_VCPUS, VmSpec
from qumran.config.validate import validate_spec
from qumran.errors import InvalidArgument

FIELDS = ["name", "memory", "vcpus", "hypervisor", "boot", "disks", "nics", "serial", "graphics",
          "cloud_init"]  # fmt: skip
SUBFIELDS = ["kernel", "initrd", "cmdline", "disk", "path", "format", "readonly", "type", "mac",
             "forward", "hostname", "users", "name", "ssh_authorized_keys", "password", "packages",
             "runcmd", "user_data", "network_config", "version"]  # fmt: skip
# "invalid definition: " then a field path (a name, [i], .name or a quoted key), ": why"
ERROR = re.compile(r"invalid definition: ((\(top level\))|[A-Za-z_'\"\[][^:]*): .+", re.DOTALL)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["256M", "1G", "/boot/vmlinuz", "qemu", "native", "raw", "qcow2", "user"])
)
keys = st.sampled_from(FIELDS + SUBFIELDS) | st.text(max_size=10)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=30,
)


def assert_valid_or_field_error(doc: Any) -> None:
    try:
        spec = validate_spec(doc)
    except InvalidArgument as exc:
        assert ERROR.fullmatch(exc.message) or exc.message.startswith("a definition is a mapping")
        assert len(exc.message) < 10_000
    else:
        assert isinstance(spec, VmSpec)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, documents, max_size=10))
def test_any_document_validates_or_names_a_field(doc: dict[str, Any]) -> None:
    assert_valid_or_field_error(doc)


@given(documents)
def test_any_value_at_all(doc: Any) -> None:
    assert_valid_or_field_error(doc)


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}", fullmatch=True).filter(
    lambda n: n not in {".", ".."}
)
paths = st.lists(
    st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1,
            max_size=30),
    min_size=1, max_size=5,
).map(lambda parts: "/" + "/".join(parts)).filter(
    lambda p: p.rstrip("/") == p and "/./" not in p + "/" and "//" not in p
)  # fmt: skip
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02x}" for x in [b[0] & 0xFE, *b[1:]])
)
disks = st.fixed_dictionaries(
    {"path": paths},
    optional={"format": st.sampled_from(["raw", "qcow2"]), "readonly": st.booleans()},
)
nics = st.fixed_dictionaries({}, optional={"mac": macs})


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": draw(names),
        "memory": draw(st.integers(16, MAX_MEMORY_MIB) | st.sampled_from(["64M", "2G", "1T"])),
        "vcpus": draw(st.integers(1, MAX_VCPUS)),
        "disks": draw(st.lists(disks, max_size=MAX_DISKS)),
        "nics": draw(st.lists(nics, max_size=MAX_NICS)),
        "serial": draw(st.booleans()),
        "graphics": draw(st.booleans()),
    }
    if doc["disks"] and draw(st.booleans()):
        doc["boot"] = {"disk": draw(st.integers(0, len(doc["disks"]) - 1))}
    else:
        boot = {"kernel": draw(paths), "cmdline": draw(st.text(
            st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=50
        ))}  # fmt: skip
        if draw(st.booleans()):
            boot["initrd"] = draw(paths)
        doc["boot"] = boot
    return doc


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(valid_documents())
def test_valid_specs_survive_every_round_trip(doc: dict[str, Any]) -> None:
    spec = validate_spec(doc)
    dumped = spec.model_dump(mode="json")
    assert validate_spec(dumped) == spec  # the store and the API
    assert validate_spec(json.loads(json.dumps(dumped))) == spec
    assert validate_spec(parse_definition(yaml.safe_dump(dumped), kind="yaml")) == spec
    assert validate_spec(parse_definition(json.dumps(dumped), kind="json")) == spec


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_plainly(text: str) -> None:
    for kind in ("yaml", "json", "toml"):
        try:
            doc = parse_definition(text, kind=kind, source="vm")
        except InvalidArgument as exc:
            assert exc.message.startswith("vm: ")
        else:
            assert isinstance(doc, dict)
            json.dumps(doc)  # only what JSON can carry to the daemon
