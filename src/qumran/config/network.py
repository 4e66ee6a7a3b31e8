"""The network definition: what root writes in a YAML or TOML file for `qumran net-define`.

A user-facing spec like :mod:`qumran.config.spec`: validated, unknown keys refused,
every error tied to its field path. It says *what* the network is (a type, a subnet, a
DHCP range); which bridge index or dnsmasq pid serves it is the daemon's runtime state.

Types (docs/networks.md):
- ``nat``: a bridge of qumrand's with ``ipv4.address``, dnsmasq for DHCP and DNS, and
  masquerade to the host's uplink;
- ``isolated``: the same without forwarding: guests reach each other and the bridge only;
- ``bridge``: NICs join an existing host bridge (``bridge``); qumrand runs no DHCP there;
- ``user``: each VM's own user-mode stack (QEMU's slirp); nothing on the host.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qumran.errors import InvalidArgument

NetworkType = Literal["nat", "isolated", "bridge", "user"]
MANAGED: frozenset[str] = frozenset({"nat", "isolated"})  # a bridge and dnsmasq of ours

# One path component, usable in a bridge name and a file name: no '.', so never '..'.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}"
_NAME = re.compile(NAME_PATTERN, re.ASCII)
IFNAMSIZ = 16  # include/uapi/linux/if.h: 15 characters and the NUL
# What `ip link` accepts in a name, narrowed to what is safe in a dnsmasq option line.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}", re.ASCII)
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*", re.ASCII)
BRIDGE_PREFIX = "qbr-"
LEASE_TIME = re.compile(r"[0-9]{1,7}[smhd]?|infinite", re.ASCII)
MAX_DOMAIN = 253


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dhcp(_Spec):
    start: ipaddress.IPv4Address = Field(description="first address handed out")
    end: ipaddress.IPv4Address = Field(description="last address handed out")
    lease_time: str = Field(default="1h", description="dnsmasq's form: 3600, 45m, 1h, infinite")

    @field_validator("lease_time")
    @classmethod
    def _lease(cls, value: str) -> str:
        if not LEASE_TIME.fullmatch(value):
            raise ValueError(f"{_shown(value)} is not a lease time such as 3600, 45m, 1h or 12h")
        return value


class Ipv4(_Spec):
    address: ipaddress.IPv4Interface = Field(
        description="the bridge's address and the subnet's prefix", examples=["192.168.123.1/24"]
    )
    dhcp: Dhcp | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: ipaddress.IPv4Interface) -> ipaddress.IPv4Interface:
        net = value.network
        if net.prefixlen > 30:
            raise ValueError(f"{value} leaves no room for guests; use a prefix of /30 or shorter")
        if value.ip in (net.network_address, net.broadcast_address):
            which = "network" if value.ip == net.network_address else "broadcast"
            raise ValueError(
                f"{value.ip} is the subnet's {which} address; give the bridge a host address"
                f" such as {next(net.hosts())}/{net.prefixlen}"
            )
        return value

    @model_validator(mode="after")
    def _range(self) -> Ipv4:
        if self.dhcp is None:
            return self
        net, start, end = self.address.network, self.dhcp.start, self.dhcp.end
        hosts = f"{net.network_address + 1}-{net.broadcast_address - 1}"
        for what, ip in (("start", start), ("end", end)):
            if ip not in net or ip in (net.network_address, net.broadcast_address):
                raise ValueError(
                    f"dhcp.{what}: {ip} is outside the subnet's host addresses ({net}: {hosts})"
                )
        if start > end:
            raise ValueError(f"dhcp: start {start} comes after end {end}; swap them")
        if start <= self.address.ip <= end:
            raise ValueError(
                f"dhcp: the range {start}-{end} holds the bridge's own address "
                f"{self.address.ip}; leave it out"
            )
        return self


class Dns(_Spec):
    # libvirt's dnsmasq forwards what it cannot answer to the host's resolvers; so does
    # ours by default. Tests (and air-gapped hosts) turn it off: names of the network
    # are still answered, nothing leaves the host.
    forward: bool = Field(default=True, description="forward other names to the host's resolvers")


class NetworkSpec(_Spec):
    name: str = Field(description="unique on this qumrand", examples=["default"])
    type: NetworkType = "nat"
    bridge: str | None = Field(
        default=None,
        description="nat/isolated: the bridge qumrand makes (default qbr-NAME); bridge: the"
        " existing host bridge to join",
    )
    ipv4: Ipv4 | None = None
    shared: bool = Field(default=False, description="other users may attach their VMs to it")
    autostart: bool = Field(default=False, description="start it when qumrand starts")
    domain: str | None = Field(default=None, description="DNS domain of the guests' names")
    dns: Dns = Field(default_factory=Dns)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, value: str | None) -> str | None:
        if value is not None and not _IFNAME.fullmatch(value):
            raise ValueError(
                f"{_shown(value)} is not an interface name: 1-15 letters, digits, '_', '.' or"
                " '-', starting with a letter or digit"
            )
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > MAX_DOMAIN or not _DOMAIN.fullmatch(value)):
            raise ValueError(f"{_shown(value)} is not a DNS domain such as 'vm' or 'lab.example'")
        return value

    @model_validator(mode="after")
    def _by_type(self) -> NetworkSpec:
        if self.type in MANAGED:
            if self.ipv4 is None:
                raise ValueError(
                    f"ipv4: a {self.type} network needs an address, such as "
                    "ipv4: {address: 192.168.123.1/24, dhcp: {start: 192.168.123.2, "
                    "end: 192.168.123.254}}"
                )
            return self
        extra = [f for f in ("ipv4", "domain") if getattr(self, f) is not None]
        if self.type == "bridge" and self.bridge is None:
            raise ValueError("bridge: a bridge network names the existing host bridge to join")
        if self.type == "user" and self.bridge is not None:
            extra.insert(0, "bridge")
        if extra:
            raise ValueError(
                f"{', '.join(extra)}: not used by a {self.type} network (qumrand runs no "
                "bridge address or DHCP for it); remove it"
            )
        return self

    @property
    def managed(self) -> bool:
        """qumrand makes the bridge, runs dnsmasq and writes firewall rules for it."""
        return self.type in MANAGED

    @property
    def bridge_name(self) -> str | None:
        if self.bridge is not None:
            return self.bridge
        return default_bridge_name(self.name) if self.managed else None


def check_name(value: str) -> str:
    if "/" in value or value in (".", ".."):
        raise ValueError(f"{_shown(value)} is a path; a network name is a plain name")
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{_shown(value)} is not a network name: use 1-32 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def default_bridge_name(name: str) -> str:
    """``qbr-NAME``, or for a long name its start and a digest of the whole (unique and
    stable: the name of the bridge is how a restarted qumrand finds it)."""
    whole = BRIDGE_PREFIX + name
    if len(whole) < IFNAMSIZ:
        return whole
    digest = hashlib.sha256(name.encode()).hexdigest()[:5]
    return f"{BRIDGE_PREFIX}{name[: IFNAMSIZ - 1 - len(BRIDGE_PREFIX) - 6]}-{digest}"


MAX_REPORTED = 10


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def validate_network(doc: Any) -> NetworkSpec:
    """A network definition from a plain document; InvalidArgument names each field."""
    if not isinstance(doc, dict):
        raise InvalidArgument("a network definition is a mapping of fields (name, type, ...)")
    try:
        return NetworkSpec.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        lines = []
        for e in errors[:MAX_REPORTED]:
            kind = e["type"]
            why = (
                "unknown field (check the spelling; see docs/networks.md)"
                if kind == "extra_forbidden"
                else "required field is missing"
                if kind == "missing"
                else str(e["msg"]).removeprefix("Value error, ")
            )
            # A check across fields (loc empty) names its fields in its message.
            lines.append(f"{_where(e['loc'])}: {why}" if e["loc"] else why)
        if len(errors) > MAX_REPORTED:
            lines.append(f"and {len(errors) - MAX_REPORTED} more errors")
        raise InvalidArgument("invalid network definition: " + "; ".join(lines)) from None
