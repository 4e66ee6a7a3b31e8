"""The API's JSON documents (docs/api.md), declared once for the daemon, the client and the CLI.

qumrand's routes answer with these (FastAPI reads them as response models, so the
OpenAPI document at ``/openapi.json`` is built from them); ``Domain.info()`` is typed
with :class:`VmInfo`; the client hands back what the daemon sent as plain dicts (a
newer daemon's extra fields pass through untouched, and ``--json`` prints them) typed
with these; the CLI reads them typed.

Importing this module costs ``typing`` (about 2.5 ms): the client and the CLI name it
only for the type checker (``if TYPE_CHECKING:``), so it stays off ``qumran``'s fast
path; ``qumran.client`` still offers the names at run time, imported on first use.
"""

from __future__ import annotations

from typing import Any

# typing_extensions' TypedDict: pydantic reads typing's own only from Python 3.12 on.
from typing_extensions import TypedDict


class VmInfo(TypedDict):
    """A VM: its definition and, while it runs, its process."""

    name: str
    uuid: str
    owner: int  # the uid that defined it
    state: str  # shutoff | running | paused | shutdown | crashed
    reason: str  # why: user, guest, killed, crashed, daemon-restart, booted, ...
    hypervisor: str  # qemu | native
    pid: int | None  # the hypervisor process; null when shut off
    vcpus: int
    memory_mib: int
    autostart: bool
    cpu_time: float | None  # seconds
    rss_bytes: int | None
    started_at: float | None  # UNIX time
    uptime: float | None  # seconds
    definition: dict[str, Any]  # the validated definition (see docs/definitions.md)
    # Edited while running: the definition the next start uses (null when there is none).
    pending_definition: dict[str, Any] | None
    # The guest's SSH host keys as qumrand gave them to it (its cloud_init seed), one
    # "type base64" line each; empty when qumrand made none (no cloud_init section, or the
    # user's own user_data): then they are learnt from the console.
    ssh_host_keys: list[str]


class DriverInfo(TypedDict):
    """One hypervisor driver on this host."""

    driver: str
    accelerator: str  # kvm | tcg
    reason: str  # why that accelerator, in one sentence
    version: str
    available: bool


class HostInfo(TypedDict):
    """The host, the daemon, and who is asking."""

    hostname: str
    version: str
    uid: int  # the caller's, as the kernel reports it (SO_PEERCRED)
    daemon_uid: int
    drivers: list[DriverInfo]


class DaemonInfo(TypedDict):
    """qumrand itself: its process, where it listens and keeps things, its settings."""

    pid: int
    uid: int
    version: str
    started_at: float  # UNIX time this process image started (a restart renews it)
    socket: str
    socket_source: str  # qumrand (bound it itself) | systemd (socket activation)
    systemd_unit: str | None  # the systemd unit it runs in, if any
    config_file: str | None  # the settings file read, if any
    run_dir: str
    state_dir: str
    log_level: str
    web: str | None  # the web manager's URL, null when it is off


class Event(TypedDict):
    """A lifecycle event of a VM."""

    id: int
    time: float
    uuid: str
    vm: str
    owner: int
    event: str
    state: str
    reason: str
    detail: str


class NicCounters(TypedDict):
    """A network NIC's counters, from the guest's side (rx: what the guest received)."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


class NicSample(NicCounters):
    """One network NIC's counters in a sample."""

    interface: str  # its TAP on the host
    mac: str
    network: str


class Sample(TypedDict):
    """One sample of a running VM's counters (null where the hypervisor has none)."""

    t: float
    cpu_percent: float
    rss_bytes: int
    disk_read_bytes: int | None
    disk_write_bytes: int | None
    # Sums over the VM's network NICs (their TAPs' counters); null without one.
    net_rx_bytes: int | None
    net_tx_bytes: int | None
    net_interfaces: list[NicSample]  # each network NIC's own counters


class InterfaceInfo(TypedDict):
    """One NIC of a VM (``qumran domiflist`` / ``domifaddr``)."""

    index: int  # its place in the definition's nics
    interface: str | None  # its TAP on the host while the VM runs (network NICs)
    type: str  # user | network
    network: str | None  # the qumrand network (network NICs)
    model: str  # virtio
    mac: str
    ip: str | None  # the address the network's dnsmasq leased to the MAC, if any
    hostname: str | None  # the name the guest gave with its DHCP request
    counters: NicCounters | None  # while the VM runs (network NICs)


class Stats(TypedDict):
    """The last 10 minutes of samples, newest last."""

    interval: float
    samples: list[Sample]


class LoginToken(TypedDict):
    """A one-time login URL for the web manager."""

    token: str
    url: str


class ErrorDetail(TypedDict):
    code: str  # stable: invalid-argument, not-found, ... (docs/api.md)
    message: str  # for a person: what went wrong, where, and how to fix it


class ErrorBody(TypedDict):
    """Every non-2xx answer of the API."""

    error: ErrorDetail


class PoolInfo(TypedDict):
    """A storage pool: a directory of its owner's (docs/storage.md)."""

    name: str
    owner: int  # the uid it belongs to
    path: str
    usable: bool  # false when its directory is gone or no longer its owner's
    problem: str | None  # why it is not usable
    capacity: int  # bytes of its file system
    available: int  # bytes free there
    allocation: int  # bytes its volumes take on disk
    volumes: int  # how many


class VolumeInfo(TypedDict):
    """A volume: a disk image file in a pool."""

    name: str
    pool: str
    owner: int
    path: str
    format: str  # qcow2 | raw
    capacity: int  # the virtual size, bytes
    allocation: int  # bytes it takes on disk
    backing: str | None  # an overlay's backing file (absolute path)
    backing_format: str | None
    used_by: list[str]  # the defined VMs whose disks name it


class NetworkInfo(TypedDict):
    """A virtual network (docs/networks.md)."""

    name: str
    type: str  # nat | isolated | bridge | user
    active: bool
    autostart: bool
    shared: bool  # other users may attach their VMs to it
    bridge: str | None  # the bridge NICs join (None for user networks)
    address: str | None  # the bridge's address and prefix, 192.168.122.1/24
    dhcp: str | None  # the DHCP range, "192.168.122.2-192.168.122.254"
    domain: str | None
    dns_forward: bool  # whether dnsmasq forwards other names to the host's resolvers
    dnsmasq_pid: int | None  # while active (root sees it)
    definition: dict[str, Any]


class LeaseInfo(TypedDict):
    """A DHCP lease dnsmasq handed out on a network."""

    network: str
    mac: str
    ip: str
    hostname: str | None
    expires: int  # seconds since the epoch; 0: never
    client_id: str | None
