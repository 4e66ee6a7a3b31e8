"""The VM definition: what a user writes in a YAML or TOML file.

This is the user-facing spec: validated, unknown keys rejected, every error tied to a
field path. It says *what* the VM is; where its sockets live or which pid runs it is
the daemon's runtime state, kept apart (see ``qumran.daemon``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from qumran.config.units import parse_size

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
MIN_MEMORY_MIB = 16
MAX_VCPUS = 64
# What the memory field accepts, for the JSON schema (the validator reads it as a size).
_MEMORY_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "integer", "minimum": MIN_MEMORY_MIB},
            {"type": "string", "pattern": r"^\s*\d+\s*[KMGTkmgt]?([iI]?[bB])?\s*$"},
        ],
        "description": "MiB; accepts 256, '256M', '1G'",
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

    @field_validator("kernel", "initrd")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"path must be absolute, got {str(value)!r}")
        return value


class DiskBoot(Spec):
    """Firmware boot from the first disk (QEMU driver only)."""

    disk: int = Field(default=0, ge=0, description="index into `disks`")


def _boot_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "kernel" if "kernel" in value else "disk"
    return "kernel" if isinstance(value, KernelBoot) else "disk"


Boot = Annotated[
    Annotated[KernelBoot, Tag("kernel")] | Annotated[DiskBoot, Tag("disk")],
    Discriminator(_boot_kind),
]


class Disk(Spec):
    path: Path
    format: Literal["raw", "qcow2"] = "raw"
    readonly: bool = False

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"path must be absolute, got {str(value)!r}")
        return value


class Nic(Spec):
    type: Literal["user"] = "user"
    model: Literal["virtio"] = "virtio"
    mac: str | None = None

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if not _MAC.match(value):
            raise ValueError(f"{value!r} is not a MAC address such as 52:54:00:12:34:56")
        if int(value[:2], 16) & 1:
            raise ValueError(f"{value!r} is a multicast address; use a unicast one")
        return value


class VmSpec(Spec):
    """A virtual machine definition."""

    name: str = Field(description="unique per host; safe as a file name")
    memory: Annotated[int, _MEMORY_SCHEMA] = Field(description="MiB; accepts 256, '256M', '1G'")
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    hypervisor: Literal["qemu", "native"] = "qemu"
    boot: Boot
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    serial: bool = Field(default=True, description="a serial console on COM1")
    graphics: bool = Field(default=False, description="a VNC display (QEMU driver)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value) or value in {".", ".."}:
            raise ValueError(
                f"{value!r} is not a valid name: use 1-63 letters, digits, '.', '_', '+' "
                "or '-', starting with a letter or digit"
            )
        return value

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        if not isinstance(value, int | str):
            raise ValueError("expected a size such as 256M or 1G")
        mib = parse_size(value, "M") // (1 << 20)
        if mib < MIN_MEMORY_MIB:
            raise ValueError(f"{mib} MiB is too little; at least {MIN_MEMORY_MIB} MiB")
        return mib

    @model_validator(mode="after")
    def _boot_disk_exists(self) -> VmSpec:
        if isinstance(self.boot, DiskBoot) and self.boot.disk >= len(self.disks):
            raise ValueError(
                f"boot.disk is {self.boot.disk} but only {len(self.disks)} disk(s) are defined"
            )
        return self
