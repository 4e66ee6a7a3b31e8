"""vhost-net: the host kernel moves virtio-net's frames between the guest's rings and the TAP.

With vhost, qumran-vmm still owns the device model (PCI, feature negotiation, the
configuration space, the TAP's offloads), but once the driver sets DRIVER_OK the rings are
served by a kernel thread of the host (``vhost-PID``) instead of the device I/O loop:

- we describe guest RAM (VHOST_SET_MEM_TABLE: guest-physical ranges and the host-virtual
  addresses of our mapping of them) and each ring (size, next available index, the host
  addresses of its three areas);
- kicks: the queue's notify eventfd, which KVM signals on the guest's doorbell write
  (KVM_IOEVENTFD), goes to the kernel (VHOST_SET_VRING_KICK); the transport stops reading it;
- interrupts: the kernel signals an eventfd when the driver wants a used-buffer notification
  (it applies EVENT_IDX / NO_INTERRUPT itself). While the queue's MSI-X vector is enabled
  and unmasked, that is the vector's irqfd, so the interrupt reaches the guest without
  leaving the kernel. Otherwise (vector masked, MSI-X off and INTx in use, no vector) it is a
  relay eventfd that the device I/O loop turns into the transport's interrupt path, where a
  masked vector sets its pending bit and INTx sets the ISR. The choice is made again
  whenever the driver writes the MSI-X table or control (VHOST_SET_VRING_CALL may change
  at any time).
- VHOST_NET_SET_BACKEND attaches the TAP; detaching it (fd -1) and VHOST_GET_VRING_BASE
  stop the rings, on device reset and when the VM stops.

Headers: the TAP keeps IFF_VNET_HDR with a 12-byte header (``tap.py``) and we never ack
VHOST_NET_F_VIRTIO_NET_HDR, so the kernel passes ``virtio_net_hdr_v1`` through between
the guest's buffers and the TAP unchanged, exactly as the userspace path does; with
MRG_RXBUF it fills num_buffers itself.

ABI: Linux ``include/uapi/linux/vhost.h`` and ``vhost_types.h``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
from collections.abc import Callable, Sequence
from ctypes import c_int32, c_uint32, c_uint64

from qumran.kvm.ioctl import io, ior, iow, iowr
from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio.device import (
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
    DeviceContext,
    KernelQueues,
)
from qumran.vmm.devices.virtio.queue import ring_sizes
from qumran.vmm.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the VMM's run time (resident memory)
    from typing import Any

log = get_logger(__name__)

VHOST_NET_DEVICE = "/dev/vhost-net"


# --- ABI (vhost_types.h) -----------------------------------------------------------------


class vhost_vring_state(ctypes.Structure):
    _fields_ = [("index", c_uint32), ("num", c_uint32)]


class vhost_vring_file(ctypes.Structure):
    _fields_ = [("index", c_uint32), ("fd", c_int32)]  # fd -1: detach


class vhost_vring_addr(ctypes.Structure):
    _fields_ = [
        ("index", c_uint32),
        ("flags", c_uint32),  # VHOST_VRING_F_LOG: dirty logging, unused
        ("desc_user_addr", c_uint64),
        ("used_user_addr", c_uint64),
        ("avail_user_addr", c_uint64),
        ("log_guest_addr", c_uint64),
    ]


class vhost_memory_region(ctypes.Structure):
    _fields_ = [
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
        ("flags_padding", c_uint64),
    ]


class vhost_memory(ctypes.Structure):
    """The header; ``nregions`` vhost_memory_region entries follow it."""

    _fields_ = [("nregions", c_uint32), ("padding", c_uint32)]


KERNEL_SIZES = {vhost_vring_state: 8, vhost_vring_file: 8, vhost_vring_addr: 40,
                vhost_memory_region: 32, vhost_memory: 8}  # fmt: skip
for _struct, _size in KERNEL_SIZES.items():
    if ctypes.sizeof(_struct) != _size:
        raise ImportError(f"{_struct.__name__} is {ctypes.sizeof(_struct)} bytes, kernel: {_size}")

# --- ioctls (vhost.h) --------------------------------------------------------------------

_V = 0xAF  # VHOST_VIRTIO
VHOST_GET_FEATURES = ior(_V, 0x00, c_uint64)
VHOST_SET_FEATURES = iow(_V, 0x00, c_uint64)
VHOST_SET_OWNER = io(_V, 0x01)
VHOST_SET_MEM_TABLE = iow(_V, 0x03, vhost_memory)
VHOST_SET_VRING_NUM = iow(_V, 0x10, vhost_vring_state)
VHOST_SET_VRING_ADDR = iow(_V, 0x11, vhost_vring_addr)
VHOST_SET_VRING_BASE = iow(_V, 0x12, vhost_vring_state)
VHOST_GET_VRING_BASE = iowr(_V, 0x12, vhost_vring_state)
VHOST_SET_VRING_KICK = iow(_V, 0x20, vhost_vring_file)
VHOST_SET_VRING_CALL = iow(_V, 0x21, vhost_vring_file)
VHOST_NET_SET_BACKEND = iow(_V, 0x30, vhost_vring_file)

# The kernel adds and strips the net header itself (for sockets without one): never ours.
VHOST_NET_F_VIRTIO_NET_HDR = 1 << 27
F_MRG_RXBUF = 1 << 15  # virtio-net 5.1.3
# Device features that the rings' server must implement; the others (checksum and TSO
# offloads, MAC, STATUS) live in the header the TAP reads or in our configuration space.
RING_FEATURES = VIRTIO_F_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_VERSION_1 | F_MRG_RXBUF


_OPEN_HINTS = {
    errno.ENOENT: "; is the vhost_net module loaded?",
    errno.EACCES: "; the user needs read-write access to it",
}


def memory_table(regions: Sequence[tuple[int, int, int]]) -> ctypes.Structure:
    """struct vhost_memory with its regions, from (guest address, size, host address)."""

    class table(ctypes.Structure):
        _fields_ = [("header", vhost_memory), ("regions", vhost_memory_region * len(regions))]

    t = table()
    t.header.nregions = len(regions)
    for i, (gpa, size, hva) in enumerate(regions):
        t.regions[i] = vhost_memory_region(gpa, size, hva, 0)
    return t


def host_address(regions: Sequence[tuple[int, int, int]], gpa: int, length: int) -> int:
    """The host-virtual address of guest range ``gpa``+``length`` (inside one region)."""
    for start, size, hva in regions:
        if start <= gpa and gpa + length <= start + size:
            return hva + gpa - start
    raise DeviceError(f"guest range {gpa:#x}+{length:#x} is not RAM")


class VhostNet:
    """One open /dev/vhost-net, owned by this process; started at each DRIVER_OK.

    It outlives guest reboots, as the TAP does: opened with the other backends, before the
    guest starts, so that ``vhost=on`` on a host without vhost-net fails with one line.
    """

    def __init__(self, fd: int, features: int, path: str) -> None:
        self.fd, self.features, self.path = fd, features, path
        # One relay per queue (receive, transmit): the call eventfd when not the irqfd.
        self._relays = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
        self._calls: dict[int, int] = {}  # queue -> eventfd the kernel signals now
        self._running: list[int] = []  # queues with the TAP attached
        self._ctx: DeviceContext | None = None
        self._kernel: KernelQueues | None = None

    @classmethod
    def open(cls, path: str | None = None, fd: int | None = None) -> VhostNet:
        """Open ``path`` (/dev/vhost-net), or take ``fd``, one already open (vhostfd=N)."""
        path = path or VHOST_NET_DEVICE
        if fd is not None:
            path = f"vhostfd={fd}"
            try:
                os.set_inheritable(fd, False)
            except OSError as exc:
                raise DeviceError(f"vhost=on: {path}: {exc.strerror}") from None
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                hint = _OPEN_HINTS.get(exc.errno or 0, "")
                raise DeviceError(
                    f"vhost=on: cannot open {path}: {exc.strerror}{hint} (or use vhost=off)"
                ) from None
        try:
            fcntl.ioctl(fd, VHOST_SET_OWNER)
            features = c_uint64()
            fcntl.ioctl(fd, VHOST_GET_FEATURES, features)
        except OSError as exc:
            os.close(fd)
            raise DeviceError(f"vhost=on: {path} refused this process: {exc.strerror}") from None
        if not features.value & VIRTIO_F_VERSION_1:
            os.close(fd)
            raise DeviceError(f"vhost=on: {path} does not support virtio 1.x (kernel too old)")
        return cls(fd, features.value, path)

    def offerable(self, device_features: int) -> int:
        """``device_features`` without the ring features the kernel does not implement."""
        return device_features & ~(RING_FEATURES & ~self.features)

    # --- start and stop (vCPU threads, under the transport's lock) --------------------------

    def start(self, ctx: DeviceContext, kernel: KernelQueues, tap_fd: int) -> None:
        """Hand the ready queues and the TAP to the kernel; DeviceError if it refuses."""
        self._ctx, self._kernel = ctx, kernel
        acked = ctx.features & self.features & ~VHOST_NET_F_VIRTIO_NET_HDR
        self._ioctl(VHOST_SET_FEATURES, c_uint64(acked), "SET_FEATURES")
        self._ioctl(VHOST_SET_MEM_TABLE, memory_table(kernel.regions), "SET_MEM_TABLE")
        ready = [i for i, q in enumerate(ctx.queues) if q.ready]
        for index in ready:
            self._start_ring(ctx, kernel, index)
        for index in ready:
            self._ioctl(VHOST_NET_SET_BACKEND, vhost_vring_file(index, tap_fd), "NET_SET_BACKEND")
            self._running.append(index)
        for index in ready:  # chains the driver made available before DRIVER_OK
            os.eventfd_write(kernel.kick_fds[index], 1)

    def _start_ring(self, ctx: DeviceContext, kernel: KernelQueues, index: int) -> None:
        q, regions = ctx.queues[index], kernel.regions
        desc_len, avail_len, used_len = ring_sizes(q.size)  # event fields included
        addr = vhost_vring_addr(
            index, 0, host_address(regions, q.desc_addr, desc_len),
            host_address(regions, q.used_addr, used_len),
            host_address(regions, q.avail_addr, avail_len), 0,
        )  # fmt: skip
        self._ioctl(VHOST_SET_VRING_NUM, vhost_vring_state(index, q.size), "SET_VRING_NUM")
        self._ioctl(VHOST_SET_VRING_BASE, vhost_vring_state(index, q.last_avail), "SET_VRING_BASE")
        self._ioctl(VHOST_SET_VRING_ADDR, addr, "SET_VRING_ADDR")
        self._ioctl(VHOST_SET_VRING_KICK, vhost_vring_file(index, kernel.kick_fds[index]),
                    "SET_VRING_KICK")  # fmt: skip
        relay = self._relays[index]
        ctx.loop.add_reader(relay, functools.partial(_relay, relay, kernel.interrupt, index))
        self._set_call(index)

    def update_calls(self) -> None:
        """The driver changed MSI-X (a mask, an address, enable): re-pick the call fds."""
        for index in list(self._calls):
            self._set_call(index)

    def _set_call(self, index: int) -> None:
        kernel = self._kernel
        assert kernel is not None
        direct = kernel.irqfd(index)
        fd = self._relays[index] if direct is None else direct
        if self._calls.get(index) == fd:
            return
        try:
            self._ioctl(VHOST_SET_VRING_CALL, vhost_vring_file(index, fd), "SET_VRING_CALL")
        except DeviceError as exc:
            log.warning("%s", exc)
            return
        self._calls[index] = fd

    def stop(self) -> None:
        """Detach the TAP and take the rings back; safe to call when not started, or
        after a start that failed half-way."""
        if self._kernel is None:
            return
        ctx, self._ctx = self._ctx, None
        for index in self._running:
            self._quiet(VHOST_NET_SET_BACKEND, vhost_vring_file(index, -1))
        for index in self._running:
            state = vhost_vring_state(index, 0)
            if self._quiet(VHOST_GET_VRING_BASE, state) and ctx is not None:
                ctx.queues[index].last_avail = state.num  # where the kernel stopped
        for index in range(len(self._relays)):
            self._quiet(VHOST_SET_VRING_KICK, vhost_vring_file(index, -1))
            self._quiet(VHOST_SET_VRING_CALL, vhost_vring_file(index, -1))
        if ctx is not None:
            for relay in self._relays:
                ctx.loop.remove_reader(relay)
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(relay)
        self._running, self._calls, self._kernel = [], {}, None

    def close(self) -> None:
        self.stop()
        for fd in self._relays:
            os.close(fd)
        self._relays = []
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    # --- ioctls ---------------------------------------------------------------------------

    def _ioctl(self, request: int, arg: Any, what: str) -> None:
        """fcntl.ioctl on a mutable ctypes object, OSError translated."""
        try:
            fcntl.ioctl(self.fd, request, arg)
        except OSError as exc:
            raise DeviceError(f"vhost-net: VHOST_{what}: {exc.strerror}") from None

    def _quiet(self, request: int, arg: Any) -> bool:
        """An ioctl on the way down, where a failure only leaves less to undo."""
        try:
            fcntl.ioctl(self.fd, request, arg)
        except OSError as exc:
            log.debug("vhost-net: stop: %s", exc.strerror)
            return False
        return True


def _relay(fd: int, interrupt: Callable[[int], None], index: int) -> None:
    """The kernel asked for queue ``index``'s interrupt through the relay (I/O loop)."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        return
    interrupt(index)
