"""The VM definition: what a user writes in a YAML or TOML file.

This is the user-facing spec: validated, unknown keys rejected, every error tied to a
field path. It says *what* the VM is; where its sockets live or which pid runs it is
the daemon's runtime state, kept apart (see ``qumran.daemon``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from qumran.config import volnames
from qumran.config.cloudinit import CloudInit
from qumran.config.network import check_name as check_network_name
from qumran.config.units import parse_size, size_floor

# Matched with fullmatch: with re.match, "$" also matches before a final newline, and
# "web\n" would be taken as a second VM that looks like "web" in `qumran list`.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}"
_NAME = re.compile(NAME_PATTERN, re.ASCII)
_MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", re.ASCII)
# QEMU's hostfwd: proto:[hostaddr]:hostport-[guestaddr]:guestport (IPv4, one port each).
_FORWARD = re.compile(r"(tcp|udp):([0-9.]*):([0-9]{1,5})-([0-9.]*):([0-9]{1,5})", re.ASCII)

# The bounds of a definition (docs/definitions.md lists them).
MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 16 << 20  # 16 TiB; the host's RAM is checked at define (unless forced)
MAX_VCPUS = 64
MAX_DISKS = 16
MAX_NICS = 8
MAX_FORWARDS = 32  # per NIC
MAX_CMDLINE = 4096  # bytes; Linux itself keeps 2048 on x86 (COMMAND_LINE_SIZE)
PATH_MAX = 4096  # linux/limits.h: bytes, the terminating NUL included
NAME_MAX = 255  # linux/limits.h: bytes in one path component


def shown(value: object, limit: int = 40) -> str:
    """``repr`` of a user's value, cut short: an error message never echoes a megabyte."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _encoded(value: str, what: str) -> bytes:
    """The bytes the kernel will see; refuses what cannot reach it intact."""
    if "\0" in value:
        raise ValueError(f"{what} contains a NUL character")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text") from None


def _host_path(value: Any) -> Any:
    """Bounds on a path field, checked before pydantic makes it a Path."""
    if not isinstance(value, str):
        return value  # pydantic's own type error says what was expected
    if not value:
        raise ValueError("path is empty; give an absolute path")
    raw = _encoded(value, "path")
    if len(raw) >= PATH_MAX:
        raise ValueError(f"path is {len(raw)} bytes long; the limit is {PATH_MAX - 1}")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise ValueError(
            f"path has a {len(longest)}-byte component; each file or folder name is at most "
            f"{NAME_MAX} bytes"
        )
    if not value.startswith("/"):
        raise ValueError(f"path must be absolute, got {shown(value)}")
    return value


# What the memory field accepts, for the JSON schema (the validator reads it as a size).
_MEMORY_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "integer", "minimum": MIN_MEMORY_MIB},
            {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[KMGTkmgt]?([iI]?[bB])?\s*$"},
        ],
        "description": "MiB; accepts 256, '256M', '1.5G'",
    },
    mode="validation",
)


class Spec(BaseModel):
    """Base of every spec model: immutable, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KernelBoot(Spec):
    """Direct kernel boot: the hypervisor loads a kernel (and initrd) itself."""

    kernel: Path
    initrd: Path | None = None
    cmdline: str = ""

    _paths = field_validator("kernel", "initrd", mode="before")(_host_path)

    @field_validator("cmdline")
    @classmethod
    def _cmdline(cls, value: str) -> str:
        size = len(_encoded(value, "cmdline"))
        if size > MAX_CMDLINE:
            raise ValueError(f"cmdline is {size} bytes long; the limit is {MAX_CMDLINE}")
        return value


class DiskBoot(Spec):
    """Firmware boot from the first disk (QEMU driver only)."""

    disk: int = Field(default=0, ge=0, lt=MAX_DISKS, description="index into `disks`")


def _boot_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "kernel" if "kernel" in value else "disk"
    return "kernel" if isinstance(value, KernelBoot) else "disk"


Boot = Annotated[
    Annotated[KernelBoot, Tag("kernel")] | Annotated[DiskBoot, Tag("disk")],
    Discriminator(_boot_kind),
]


class Disk(Spec):
    """A disk: a host file (``path``) or a volume of one of the owner's storage pools
    (``volume``, in ``pool``), exactly one of the two. The daemon turns a volume into its
    path and real format (qumran.daemon.storage.resolve) before a driver sees the spec,
    so drivers only ever read :attr:`host_path`."""

    path: Path | None = None
    volume: str | None = Field(default=None, description="a volume of the pool `pool`")
    pool: str = Field(default="default", description="the pool of `volume`")
    # A path disk is raw unless told; a volume's format is what qemu-img finds (given
    # here, it must match: a guard against a raw volume whose guest wrote a qcow2 header).
    format: Literal["raw", "qcow2"] | None = None
    readonly: bool = False

    _path = field_validator("path", mode="before")(_host_path)

    @field_validator("volume")
    @classmethod
    def _volume(cls, value: str | None) -> str | None:
        return None if value is None else volnames.volume_name(value)

    @field_validator("pool")
    @classmethod
    def _pool(cls, value: str) -> str:
        return volnames.pool_name(value)

    @model_validator(mode="after")
    def _path_or_volume(self) -> Disk:
        if (self.path is None) == (self.volume is None):
            raise ValueError("give exactly one of path (a host file) or volume (a pool's volume)")
        if self.path is not None and self.format is None:
            object.__setattr__(self, "format", "raw")  # frozen: set once, while validating
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the fields of the kind of disk it is: a path disk dumps as it always did
        (no ``volume: null, pool: default`` in every stored definition and dumpdef)."""
        data: dict[str, Any] = handler(self)
        unused = ("volume", "pool") if self.path is not None else ("path",)
        for key in unused:
            data.pop(key, None)
        if data.get("format", "") is None:
            del data["format"]  # a volume's format is what qemu-img finds
        return data

    @property
    def host_path(self) -> Path:
        """The file the hypervisor opens (a volume's, once the daemon resolved it)."""
        if self.path is None:
            raise ValueError(f"internal: volume {self.volume!r} was not resolved to a path")
        return self.path


@dataclass(frozen=True)
class Forward:
    """One parsed port forward of a user-mode NIC."""

    proto: Literal["tcp", "udp"]
    host_addr: str  # "" means every address, as in QEMU
    host_port: int
    guest_addr: str  # "" means the guest's DHCP address
    guest_port: int

    def clashes(self, other: Forward) -> bool:
        """Both would bind the same host port (an empty address is every address)."""
        return (
            self.proto == other.proto
            and self.host_port == other.host_port
            and (self.host_addr == other.host_addr or "" in (self.host_addr, other.host_addr))
        )


def _ipv4(text: str, what: str, rule: str) -> str:
    if not text:
        return ""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{shown(rule)}: {what} {shown(text)} is not an IPv4 address") from None


def _port(text: str, what: str, rule: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{shown(rule)}: {what} {port} is not a port (1-65535)")
    return port


def parse_forward(rule: str) -> Forward:
    """A ``forward`` entry, checked: ``tcp:127.0.0.1:2222-:22`` (QEMU's hostfwd syntax)."""
    match = _FORWARD.fullmatch(rule)
    if match is None:
        raise ValueError(
            f"{shown(rule)} is not a port forward: write PROTO:[HOSTADDR]:HOSTPORT-"
            "[GUESTADDR]:GUESTPORT, such as tcp:127.0.0.1:2222-:22 (PROTO tcp or udp, "
            "addresses IPv4 or empty)"
        )
    proto, host_addr, host_port, guest_addr, guest_port = match.groups()
    return Forward(
        "tcp" if proto == "tcp" else "udp",
        _ipv4(host_addr, "host address", rule),
        _port(host_port, "host port", rule),
        _ipv4(guest_addr, "guest address", rule),
        _port(guest_port, "guest port", rule),
    )


def _no_clash(parsed: list[Forward], rules: tuple[str, ...]) -> None:
    for i, forward in enumerate(parsed):
        for j in range(i):
            if forward.clashes(parsed[j]):
                raise ValueError(
                    f"{shown(rules[i])} and {shown(rules[j])} both forward host "
                    f"{forward.proto} port {forward.host_port}; give each its own port"
                )


class Nic(Spec):
    """A virtio-net NIC: on QEMU's user-mode stack (``type: user``, with port forwards), or
    on one of qumrand's networks (``network: NAME``; docs/networks.md), through a TAP."""

    type: Literal["user", "network"] = Field(
        default="user", description="user: QEMU's user-mode stack; network: `network`'s bridge"
    )
    network: str | None = Field(
        default=None, description="the qumrand network to attach to (`qumran net-list`)"
    )
    model: Literal["virtio"] = "virtio"
    mac: str | None = None
    forward: tuple[str, ...] = Field(
        default=(),
        max_length=MAX_FORWARDS,
        description="host ports forwarded to the guest: tcp:127.0.0.1:2222-:22 (QEMU hostfwd)",
    )

    @field_validator("forward")
    @classmethod
    def _forward(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parsed = [parse_forward(rule) for rule in value]
        _no_clash(parsed, value)
        return value

    @property
    def forwards(self) -> tuple[Forward, ...]:
        return tuple(parse_forward(rule) for rule in self.forward)

    @model_validator(mode="before")
    @classmethod
    def _network_type(cls, data: Any) -> Any:
        # `network: NAME` alone is a network NIC: type follows from it.
        if isinstance(data, dict) and data.get("network") is not None and "type" not in data:
            return {**data, "type": "network"}
        return data

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        return None if value is None else check_network_name(value)

    @model_validator(mode="after")
    def _kind(self) -> Nic:
        if self.type == "network" and self.network is None:
            raise ValueError("network: a network NIC names its network (`qumran net-list`)")
        if self.type == "user" and self.network is not None:
            raise ValueError(
                "network: a user NIC has QEMU's own stack, no network; drop `type: user` to "
                f"attach it to {self.network!r}"
            )
        if self.network is not None and self.forward:
            raise ValueError(
                "forward: only a user NIC forwards host ports; a network NIC's guest is "
                "reached at its own address (`qumran domifaddr`)"
            )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A user NIC dumps as it always did (no ``network: null``); a network NIC has no
        ``forward``."""
        data: dict[str, Any] = handler(self)
        if self.network is None:
            data.pop("network", None)
        else:
            data.pop("forward", None)
        return data

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if not _MAC.fullmatch(value):
            raise ValueError(f"{shown(value)} is not a MAC address such as 52:54:00:12:34:56")
        if int(value[:2], 16) & 1:
            raise ValueError(f"{value!r} is a multicast address; use a unicast one")
        return value


class VmSpec(Spec):
    """A virtual machine definition."""

    name: str = Field(description="unique per host; safe as a file name")
    memory: Annotated[int, _MEMORY_SCHEMA] = Field(description="MiB; accepts 256, '256M', '1.5G'")
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    hypervisor: Literal["qemu", "native"] = "qemu"
    boot: Boot
    disks: tuple[Disk, ...] = Field(default=(), max_length=MAX_DISKS)
    nics: tuple[Nic, ...] = Field(default=(), max_length=MAX_NICS)
    serial: bool = Field(default=True, description="a serial console on COM1")
    graphics: bool = Field(default=False, description="a VNC display (QEMU driver)")
    cloud_init: CloudInit | None = Field(
        default=None, description="a NoCloud seed for the guest's cloud-init (QEMU driver)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value) or value in {".", ".."}:
            raise ValueError(
                f"{shown(value)} is not a valid name: use 1-63 letters, digits, '.', '_', '+' "
                "or '-', starting with a letter or digit"
            )
        return value

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        if not isinstance(value, int | str):
            raise ValueError("expected a size such as 256M or 1G")
        if size_floor(value, "M") < MIN_MEMORY_MIB << 20:  # as given: 512K is not "0 MiB"
            text = str(value).strip()
            shown = f"{text} MiB" if text.isdigit() else repr(text)  # a bare number is MiB
            raise ValueError(f"{shown} is too little; at least {MIN_MEMORY_MIB} MiB (16M)")
        mib = parse_size(value, "M", whole_unit="M") >> 20  # 1.3G: says which MiB instead
        if mib > MAX_MEMORY_MIB:  # the number itself may be thousands of digits: not shown
            raise ValueError(f"more than any host has; at most {MAX_MEMORY_MIB} MiB (16T)")
        return mib

    @field_validator("nics")
    @classmethod
    def _forwards_apart(cls, value: tuple[Nic, ...]) -> tuple[Nic, ...]:
        # Within one NIC its own validator has looked; here, each pair across two NICs.
        seen: list[tuple[int, str, Forward]] = []
        for index, nic in enumerate(value):
            for rule, forward in zip(nic.forward, nic.forwards, strict=True):
                for other_index, other_rule, other in seen:
                    if other_index != index and forward.clashes(other):
                        raise ValueError(
                            f"nics[{index}] forwards {shown(rule)} and nics[{other_index}] "
                            f"{shown(other_rule)}: both host {forward.proto} port "
                            f"{forward.host_port}; give each its own port"
                        )
                seen.append((index, rule, forward))
        return value

    @model_validator(mode="after")
    def _boot_disk_exists(self) -> VmSpec:
        if isinstance(self.boot, DiskBoot) and self.boot.disk >= len(self.disks):
            raise ValueError(
                f"boot.disk is {self.boot.disk} but only {len(self.disks)} disk(s) are defined"
            )
        return self
