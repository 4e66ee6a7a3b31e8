"""From command-line device specs to open host resources, and per boot to virtio devices.

Everything that can fail because of the user's input (a missing image, a read-only file, a
TAP that cannot be created, a bad MAC address) fails in :func:`open_backends`, before the
guest starts, with one clear line. The backends outlive guest reboots; the devices are
made fresh for every boot.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from qumran.record import Record
from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio.blk import DiskImage, VirtioBlock
from qumran.vmm.devices.virtio.console import ConsolePort, VirtioConsole
from qumran.vmm.devices.virtio.device import VirtioDevice
from qumran.vmm.devices.virtio.rng import VirtioRng

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from qumran.vmm.devices.virtio.passt_link import PasstSpec


class DiskSpec(Record):
    """One ``--disk``."""

    __slots__ = __match_args__ = ("path", "readonly", "vhost_user", "fd")

    def __init__(self, path: str, readonly: bool = False, vhost_user: bool = False,
                 fd: int | None = None) -> None:  # fmt: skip
        self.path: Final = path
        self.readonly: Final = readonly
        self.vhost_user: Final = vhost_user  # ``path`` is a vhost-user-blk socket, not an image
        self.fd: Final = fd  # an image inherited open (``fd=N``): ``path`` is only its name

    @classmethod
    def parse(cls, text: str) -> DiskSpec:
        """``PATH[,ro]``, ``fd=N[,ro]`` (an image the parent opened, such as qumrand's
        cloud-init seed: no path of the user's is followed), or ``vhost-user=SOCKET``
        (the back end decides read-only)."""
        if text.startswith("vhost-user="):
            socket_path = text.removeprefix("vhost-user=")
            if not socket_path:
                raise DeviceError(f"--disk {text!r}: no socket path after vhost-user=")
            return cls(socket_path, vhost_user=True)
        path, _, opts = text.partition(",")
        if not path:
            raise DeviceError(f"--disk {text!r}: no image path")
        if opts not in ("", "ro"):
            raise DeviceError(f"--disk {text!r}: unknown option {opts!r} (only 'ro')")
        if path.startswith("fd="):
            number = path.removeprefix("fd=")
            if not number.isdigit():
                raise DeviceError(f"--disk {text!r}: fd= needs a file descriptor number")
            return cls(path, opts == "ro", fd=int(number))
        return cls(path, opts == "ro")


MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


class NetSpec(Record):
    """One ``--net`` on a TAP."""

    __slots__ = __match_args__ = ("tap", "fd", "mac", "vhost", "vhost_fd")

    def __init__(self, tap: str | None = None, fd: int | None = None, mac: str | None = None,
                 vhost: bool = False, vhost_fd: int | None = None) -> None:  # fmt: skip
        self.tap: Final = tap
        self.fd: Final = fd
        self.mac: Final = mac
        self.vhost: Final = vhost  # off unless asked: the same data path on every host
        # An open /dev/vhost-net handed over by whoever started us (qumrand opens it as
        # root, so the VM's user needs no right to it); implies vhost=on.
        self.vhost_fd: Final = vhost_fd

    @classmethod
    def parse(cls, text: str) -> NetSpec:
        """``tap=NAME[,mac=52:54:00:xx:xx:xx][,vhost=on|off]`` or ``fd=N[,..]``."""
        opts: dict[str, str] = {}
        for item in text.split(","):
            key, eq, value = item.partition("=")
            if not eq or key not in ("tap", "fd", "mac", "vhost", "vhostfd") or key in opts:
                raise DeviceError(
                    f"--net {text!r}: expected tap=NAME or fd=N, then mac=.., vhost=on|off"
                    " and vhostfd=N"
                )
            opts[key] = value
        vhost = opts.get("vhost", "off")
        if vhost not in ("on", "off"):
            raise DeviceError(f"--net {text!r}: vhost must be on or off, not {vhost!r}")
        if ("tap" in opts) == ("fd" in opts):
            raise DeviceError(f"--net {text!r}: give exactly one of tap=NAME and fd=N")
        mac = opts.get("mac")
        if mac is not None:
            if not MAC_RE.fullmatch(mac):
                raise DeviceError(f"--net {text!r}: bad MAC address {mac!r}")
            if int(mac[:2], 16) & 1:
                raise DeviceError(f"--net {text!r}: {mac} is a multicast address")
        for key in ("fd", "vhostfd"):
            if key in opts and not opts[key].isdigit():
                raise DeviceError(f"--net {text!r}: {key} must be a number")
        vhost_fd = int(opts["vhostfd"]) if "vhostfd" in opts else None
        if vhost_fd is not None and vhost == "off":
            raise DeviceError(f"--net {text!r}: vhostfd=N is for vhost=on")
        tap = opts.get("tap")
        if tap is not None and not 0 < len(tap) < 16:
            raise DeviceError(f"--net {text!r}: TAP names are 1 to 15 characters")
        return cls(tap, int(opts["fd"]) if "fd" in opts else None, mac,
                   vhost == "on" or vhost_fd is not None, vhost_fd)  # fmt: skip


def parse_net(text: str) -> NetSpec | PasstSpec:
    """A ``--net`` value: a TAP (:class:`NetSpec`) or passt (``passt[,...]``)."""
    if text == "passt" or text.startswith("passt,"):
        from qumran.vmm.devices.virtio.passt_link import PasstSpec

        return PasstSpec.parse(text)
    return NetSpec.parse(text)


class DeviceSpecs(Record):
    """Every virtio device of the command line."""

    __slots__ = __match_args__ = ("disks", "nets", "rng", "console")

    def __init__(self, disks: tuple[DiskSpec, ...] = (), nets: tuple[NetSpec | PasstSpec, ...] = (),
                 rng: bool = False, console: ConsolePort | None = None) -> None:  # fmt: skip
        self.disks: Final = disks
        self.nets: Final = nets
        self.rng: Final = rng
        self.console: Final = console


class Backends:
    """Open host resources; ``make_devices`` builds this boot's virtio devices from them."""

    __slots__ = ("closers", "disks", "factories")

    def __init__(self) -> None:
        self.disks: list[DiskImage] = []
        self.factories: list[Callable[[], VirtioDevice]] = []
        self.closers: list[Callable[[], None]] = []

    def make_devices(self) -> list[VirtioDevice]:
        return [make() for make in self.factories]

    def close(self) -> None:
        for close in self.closers:
            close()
        self.closers = []


def open_backends(specs: DeviceSpecs) -> Backends:
    backends = Backends()
    try:
        for disk in specs.disks:
            if disk.vhost_user:
                _open_vhost_user(backends, disk.path)
                continue
            if disk.fd is not None:
                image = DiskImage.inherit(disk.fd, disk.readonly)
            else:
                image = DiskImage.open(disk.path, disk.readonly)
            backends.closers.append(image.close)
            backends.disks.append(image)
            backends.factories.append(lambda image=image: VirtioBlock(image))  # type: ignore[misc]
        for net in specs.nets:
            _open_net(backends, net)
        if specs.rng:
            backends.factories.append(VirtioRng)
        if specs.console is not None:
            port = specs.console
            backends.factories.append(lambda: VirtioConsole(port))
    except BaseException:
        backends.close()
        raise
    return backends


def _open_vhost_user(backends: Backends, path: str) -> None:
    from qumran.vmm.devices.virtio.vhost_user_blk import VhostUserBackend, VhostUserBlock

    try:
        backend = VhostUserBackend.open(path)
    except DeviceError as exc:
        raise DeviceError(f"--disk vhost-user={path}: {exc}") from None
    backends.closers.append(backend.close)
    backends.factories.append(lambda: VhostUserBlock(backend))


def _open_net(backends: Backends, spec: NetSpec | PasstSpec) -> None:
    from qumran.vmm.devices.virtio.net import VirtioNet, parse_mac, random_mac
    from qumran.vmm.devices.virtio.tap import Tap

    if not isinstance(spec, NetSpec):
        from qumran.vmm.devices.virtio.passt import PasstNet
        from qumran.vmm.devices.virtio.passt_link import PasstLink

        link = PasstLink.start_passt(spec)
        backends.closers.append(link.close)
        passt_mac = parse_mac(spec.mac) if spec.mac else random_mac()
        backends.factories.append(lambda: PasstNet(link, passt_mac))
        return

    vhost = None
    if spec.vhost:  # before the TAP: a host without vhost-net fails without side effects
        from qumran.vmm.devices.virtio.vhost import VhostNet

        vhost = VhostNet.open(fd=spec.vhost_fd)
        backends.closers.append(vhost.close)
    tap = Tap.open(spec.tap, spec.fd)
    backends.closers.append(tap.close)
    mac = parse_mac(spec.mac) if spec.mac else random_mac()
    backends.factories.append(lambda: VirtioNet(tap, mac, vhost))
