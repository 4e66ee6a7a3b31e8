"""The TAP device behind virtio-net: open or adopt it, and set its offloads.

The TAP is used with IFF_VNET_HDR and a 12-byte header (TUNSETVNETHDRSZ), which is exactly
``struct virtio_net_hdr_v1`` (virtio 1.2, 5.1.6), so frames pass between the TAP and the
guest's buffers header included.

Offloads, in the two directions (Linux ``drivers/net/tun.c``, ``set_offload``):
- writing to the TAP, the kernel always honours the header: a frame marked
  NEEDS_CSUM or with a gso_type is checksummed or segmented later, as needed;
- reading from the TAP, the kernel hands out partially checksummed or large (GSO) frames
  only for what TUNSETOFFLOAD allowed (TUN_F_CSUM, TUN_F_TSO4, ...): that is what the guest
  accepted. Unknown bits fail with EINVAL, so what a TAP supports is probed at open.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct

from qumran.kvm.ioctl import ior, iow
from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.log import get_logger

log = get_logger(__name__)

NET_HDR_LEN = 12  # struct virtio_net_hdr_v1 (num_buffers included with VERSION_1)

# include/uapi/linux/if_tun.h
_T = ord("T")
TUNSETIFF = iow(_T, 202, ctypes.c_int)
TUNSETOFFLOAD = iow(_T, 208, ctypes.c_uint)  # the argument is the value itself
TUNGETIFF = ior(_T, 210, ctypes.c_uint)
TUNSETVNETHDRSZ = iow(_T, 216, ctypes.c_int)
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then the flags member of the union
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08

# From the most to the least a TAP may support; TSO needs CSUM, ECN needs TSO (tun.c).
_PROBES = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
)


class Tap:
    """An open TAP fd; ``supported`` is the TUN_F_* set it accepts, ``offloads`` the set on."""

    __slots__ = ("fd", "name", "offloads", "supported")

    def __init__(self, name: str, fd: int, supported: int = 0, offloads: int = 0) -> None:
        self.name, self.fd, self.supported, self.offloads = name, fd, supported, offloads

    @classmethod
    def open(cls, name: str | None, fd: int | None) -> Tap:
        if fd is not None:
            tap = cls._adopt(fd)
        else:
            assert name is not None
            tap = cls._create(name)
        tap._probe()
        return tap

    @classmethod
    def _create(cls, name: str) -> Tap:
        try:
            tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(f"cannot create TAP {name}: /dev/net/tun: {exc.strerror}") from None
        try:
            req = IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(tun, TUNSETIFF, req)
            fcntl.ioctl(tun, TUNSETVNETHDRSZ, struct.pack("i", NET_HDR_LEN))
        except OSError as exc:
            os.close(tun)
            hint = " (creating a TAP needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
            raise DeviceError(f"cannot create TAP {name}: {exc.strerror}{hint}") from None
        return cls(name, tun)

    @classmethod
    def _adopt(cls, fd: int) -> Tap:
        try:
            raw = fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ.size))
            name, flags = IFREQ.unpack(raw)
            if not flags & IFF_TAP or not flags & IFF_VNET_HDR or not flags & IFF_NO_PI:
                raise DeviceError(f"fd {fd} is not a TAP opened with IFF_VNET_HDR|IFF_NO_PI")
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", NET_HDR_LEN))
            os.set_blocking(fd, False)
        except OSError as exc:
            raise DeviceError(f"--net fd={fd}: not a usable TAP: {exc.strerror}") from None
        return cls(name.rstrip(b"\0").decode(errors="replace"), fd)

    def _probe(self) -> None:
        """Find the largest offload set the TAP takes, then switch offloads off and drop
        what waits: a TAP given as fd=N may come with offloads on, and no guest has
        accepted any yet."""
        for offloads in _PROBES:
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, offloads)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    continue
                return  # a TAP that knows no offloads at all
            self.supported = offloads
            break
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        self.offloads = 0
        self.drain()

    def set_offloads(self, offloads: int) -> None:
        """Let the kernel hand out frames with these TUN_F_* offloads (a subset of
        ``supported``); drop frames queued under a larger set, which the guest may not take."""
        offloads &= self.supported
        if offloads == self.offloads or self.fd < 0:
            return
        shrinks = self.offloads & ~offloads
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, offloads)
        except OSError as exc:
            log.warning("TAP %s: TUNSETOFFLOAD %#x: %s", self.name, offloads, exc.strerror)
            return
        self.offloads = offloads
        if shrinks:
            self.drain()

    def drain(self) -> None:
        """Discard every frame waiting in the TAP."""
        with contextlib.suppress(OSError):
            while True:
                os.read(self.fd, 65536 + NET_HDR_LEN)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
