"""A definition's ``cloud_init:`` section: what a guest is told on its first boot.

qumrand turns it into a NoCloud seed (:mod:`qumran.images.cloudinit`) at each start. The
fields are the few that make a cloud image usable (a hostname, users with SSH keys,
packages, commands, network config); anything else goes in a ``user_data`` file of the
user's own, passed through as is. Every value is checked here, so a seed is never built
from something cloud-init would choke on halfway through a boot.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_USERS = 16
MAX_KEYS = 32  # per user
MAX_KEY_LINE = 16384  # bytes: a 16384-bit RSA key is about 2.8 KB of base64
MAX_PACKAGES = 256
MAX_RUNCMD = 64
MAX_COMMAND = 4096  # bytes per runcmd entry
MAX_NETWORK_CONFIG = 65536  # bytes of canonical JSON

# RFC 1123 labels: letters, digits and '-', not at either end; 63 bytes per label and
# 253 in all. A dot makes it a fully qualified name, which cloud-init splits itself.
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
# Debian's adduser NAME_REGEX, without the trailing '$' it allows for Samba machine
# accounts; 32 bytes is what utmp keeps of a name.
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}", re.ASCII)
# A package name, as Debian, Fedora and Alpine spell them, optionally =version.
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]{0,127}(=[A-Za-z0-9.+~:_-]{1,128})?", re.ASCII)
# What crypt(3) writes: $id$[params$]salt$hash (sha512crypt, yescrypt, bcrypt, ...).
_CRYPT = re.compile(r"\$[0-9a-z]{1,8}\$[./A-Za-z0-9$=,]{8,}", re.ASCII)
# The key types OpenSSH takes in authorized_keys (ssh-keygen -t, and certificates of them).
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_CERT_SUFFIX = "-cert-v01@openssh.com"


def _shown(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(value: str, what: str) -> str:
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"{what} must be one line of printable text")
    return value


def check_hostname(value: str) -> str:
    """``value`` if it is a valid host name (RFC 1123, optionally with a domain)."""
    if not value or len(value) > 253:
        raise ValueError(f"{_shown(value)} is not a host name: 1-253 characters")
    labels = value.removesuffix(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError(
            f"{_shown(value)} is not a host name: use letters, digits and '-' (not first or "
            "last), in dot-separated parts of at most 63"
        )
    return value


def hostname_for(vm_name: str) -> str:
    """A host name made from a VM's name: what a seed says when the section gives none.

    VM names may hold '_', '+' and '.', which host names may not (a dot would make a
    domain of the rest); each becomes '-'."""
    name = re.sub(r"[^A-Za-z0-9-]", "-", vm_name)[:63].strip("-")
    return name or "localhost"


def check_public_key(line: str) -> str:
    """``line`` if it is one OpenSSH public key line: ``type base64 [comment]``, with the
    base64 blob naming the same key type (a private key or a cut line does not)."""
    line = line.strip()
    if len(line.encode()) > MAX_KEY_LINE:
        raise ValueError(f"a key line is at most {MAX_KEY_LINE} bytes")
    _one_line(line, "an SSH public key")
    parts = line.split(None, 2)
    kind = parts[0] if parts else ""
    if not _known_type(kind):
        raise ValueError(
            f"{_shown(line)} is not an SSH public key line: it starts with the key type "
            "(ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ...); give the contents of a .pub file"
        )
    if len(parts) < 2:
        raise ValueError(f"the {kind} key has no key data after its type; paste the whole line")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {kind} key's data is not base64; paste the whole line") from None
    # The blob starts with its own key type as an SSH string (RFC 4253 6.6).
    if len(blob) < 4:
        raise ValueError(f"the {kind} key's data is cut short; paste the whole line")
    fields = _ssh_strings(blob)
    certificate = kind.endswith(_CERT_SUFFIX)  # holds integers too: only its type is read
    if not blob[4:].startswith(kind.encode()) or (
        not certificate and (fields is None or len(fields) < 2 or fields[0] != kind.encode())
    ):
        raise ValueError(
            f"the {kind} key's data is not a whole {kind} key (cut short, or another type); "
            "paste the whole line of the .pub file"
        )
    return line


def _ssh_strings(blob: bytes) -> list[bytes] | None:
    """A plain public key's blob split into its length-prefixed fields (type, then the
    key's numbers or bytes), or None if it does not split exactly: a cut line."""
    fields: list[bytes] = []
    at = 0
    while at < len(blob):
        if at + 4 > len(blob):
            return None
        (size,) = struct.unpack(">I", blob[at : at + 4])
        if at + 4 + size > len(blob):
            return None
        fields.append(blob[at + 4 : at + 4 + size])
        at += 4 + size
    return fields


def _known_type(kind: str) -> bool:
    if kind in KEY_TYPES:
        return True
    # A certificate: "ssh-ed25519-cert-v01@openssh.com"; the sk- types drop their own
    # "@openssh.com" before the suffix ("sk-ssh-ed25519-cert-v01@openssh.com").
    base = kind.removesuffix(_CERT_SUFFIX)
    return base != kind and (base in KEY_TYPES or f"{base}@openssh.com" in KEY_TYPES)


def is_crypt_hash(password: str) -> bool:
    """Whether ``password`` looks like a crypt(3) hash (``$6$salt$...``, ``$y$...``)."""
    return _CRYPT.fullmatch(password) is not None


def check_package(name: str) -> str:
    if not _PACKAGE.fullmatch(name):
        raise ValueError(
            f"{_shown(name)} is not a package name (letters, digits, '+._-', optionally =version)"
        )
    return name


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text") from None


def check_command(command: str) -> str:
    if not command.strip() or len(_utf8(command, "a command")) > MAX_COMMAND or "\0" in command:
        raise ValueError(f"a command is 1-{MAX_COMMAND} bytes of text, no NUL")
    return command


# Each entry checked on its own, so an error names its index (users[0].ssh_authorized_keys[1]).
PublicKey = Annotated[str, AfterValidator(check_public_key)]
Package = Annotated[str, AfterValidator(check_package)]
Command = Annotated[str, AfterValidator(check_command)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CloudUser(_Section):
    """A user cloud-init creates on first boot."""

    name: str = Field(description="a Linux user name: lowercase letters, digits, '_' and '-'")
    ssh_authorized_keys: tuple[PublicKey, ...] = Field(
        default=(), max_length=MAX_KEYS, description="public key lines (a .pub file's line)"
    )
    password: str | None = Field(
        default=None,
        description="a crypt(3) hash ($6$..., $y$...) or, discouraged, the plain password; "
        "none locks password login",
    )
    sudo: str | None = Field(default=None, description='one sudoers rule: "ALL=(ALL) NOPASSWD:ALL"')
    shell: str | None = Field(default=None, description="login shell, an absolute path")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _USER.fullmatch(value):
            raise ValueError(
                f"{_shown(value)} is not a Linux user name: 1-32 of lowercase letters, digits, "
                "'_' and '-', starting with a letter or '_'"
            )
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or len(value) > 1024:
            raise ValueError("a password is 1-1024 characters")
        return _one_line(value, "a password")

    @field_validator("sudo")
    @classmethod
    def _sudo(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip() or len(value) > 1024:
            raise ValueError('a sudoers rule such as "ALL=(ALL) NOPASSWD:ALL", 1-1024 characters')
        return _one_line(value, "a sudoers rule")

    @field_validator("shell")
    @classmethod
    def _shell(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or len(value) > 255:
            raise ValueError(f"{_shown(value)} is not a shell's absolute path (/bin/bash)")
        return _one_line(value, "a shell")


class CloudInit(_Section):
    """What the guest's cloud-init is given on its first boot (NoCloud)."""

    hostname: str | None = Field(
        default=None, description="the guest's host name; default: the VM's name"
    )
    users: tuple[CloudUser, ...] = Field(
        default=(),
        max_length=MAX_USERS,
        description="users to create; none: the image's default user (debian on Debian)",
    )
    packages: tuple[Package, ...] = Field(
        default=(), max_length=MAX_PACKAGES, description="packages to install on first boot"
    )
    runcmd: tuple[Command, ...] = Field(
        default=(), max_length=MAX_RUNCMD, description="shell commands run once, at first boot"
    )
    user_data: Path | None = Field(
        default=None,
        description="a user-data file passed through as is, instead of the generated one",
    )
    network_config: dict[str, Any] | None = Field(
        default=None, description="network config version 2 (netplan's format)"
    )

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        return None if value is None else check_hostname(value)

    @field_validator("users")
    @classmethod
    def _users(cls, value: tuple[CloudUser, ...]) -> tuple[CloudUser, ...]:
        names = [user.name for user in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"{name!r} is given more than once")
        return value

    @field_validator("user_data", mode="before")
    @classmethod
    def _user_data(cls, value: Any) -> Any:
        from qumran.config.spec import _host_path  # spec.py imports this module

        return _host_path(value)

    @field_validator("network_config")
    @classmethod
    def _network_config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        inner = value["network"] if set(value) == {"network"} else value
        if not isinstance(inner, dict) or inner.get("version") != 2:
            raise ValueError(
                "give network config version 2 (netplan's format): a mapping with version: 2 "
                "and ethernets, optionally under network:"
            )
        try:
            text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
        except (ValueError, TypeError):
            raise ValueError(
                "network config holds a value JSON cannot carry (NaN, infinity, a date, ...)"
            ) from None
        size = len(_utf8(text, "network config"))
        if size > MAX_NETWORK_CONFIG:
            raise ValueError(f"network config is {size} bytes; the limit is {MAX_NETWORK_CONFIG}")
        return value

    @model_validator(mode="after")
    def _one_user_data(self) -> CloudInit:
        if self.user_data is not None:
            given = [f for f in ("users", "packages", "runcmd") if getattr(self, f)]
            if given:
                raise ValueError(
                    f"user_data replaces the generated user-data, so {', '.join(given)} would "
                    "be ignored; put them in that file, or drop user_data"
                )
        return self
