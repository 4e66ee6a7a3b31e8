"""virtio-blk served by a vhost-user back end (qemu-storage-daemon's vhost-user-blk export).

qumran-vmm keeps the PCI side (the transport, feature negotiation as far as the guest
sees it, the configuration space the back end reported) and hands the rings to the back
end at DRIVER_OK, as with vhost-net (``vhost.py``), over a socket instead of ioctls:

- guest RAM: SET_MEM_TABLE with the memfd behind it (``memory.py``), which the back end
  maps; ring addresses are given in our address space, as the spec asks;
- kicks: the queue's notify eventfd (KVM_IOEVENTFD) is passed to the back end;
- interrupts: the vector's irqfd while MSI-X is on and the vector unmasked, else a relay
  eventfd that the device I/O loop turns into the transport's interrupt path (same rule as
  vhost-net), chosen again whenever the driver writes the MSI-X table or control;
- requests in flight: when the back end offers INFLIGHT_SHMFD we keep the shared buffer
  where it logs them (GET_INFLIGHT_FD), so that a back end that restarts finds and redoes
  the requests the guest is still waiting for (SET_INFLIGHT_FD after the reconnect).

The back end is connected before the guest starts (a missing socket, or one that lacks the
features below, fails the start with one line) and outlives guest reboots. A thread per
back end watches the socket; when the back end goes away it connects again every
``RETRY`` seconds and, if the device is active, sets the rings up anew. Meanwhile the
guest's requests wait in its rings: nothing is lost, nothing is failed.

Threads and locks: ``start``/``stop``/``update_calls`` run on vCPU threads under the
transport's lock; the watcher takes that lock (``DeviceContext.lock``) before our own when
it restarts the rings, the same order.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import threading

from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio import vhost_user as vu
from qumran.vmm.devices.virtio.device import (
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
    DeviceContext,
    DeviceId,
    KernelQueues,
    VirtioDevice,
)
from qumran.vmm.devices.virtio.queue import ring_sizes
from qumran.vmm.devices.virtio.vhost import _relay, host_address
from qumran.vmm.log import get_logger

log = get_logger(__name__)

QUEUE_SIZE = 256
MAX_QUEUES = 16
CONFIG_SIZE = 60  # struct virtio_blk_config up to write_zeroes_may_unmap + padding (5.2.4)
NUM_QUEUES_OFFSET = 34  # its num_queues field
RETRY = 0.1  # seconds between attempts to reach a back end that went away
# 5.2.3: the device-specific bits the back end implements. CONFIG_WCE (11) is left out:
# the driver would write the cache mode into the configuration space, which we would then
# have to pass on (SET_CONFIG); without it Linux takes the cache as write-back with FLUSH.
F_CONFIG_WCE = 1 << 11
F_MQ = 1 << 12
DEVICE_BITS = ((1 << 24) - 1) & ~F_CONFIG_WCE
RING_BITS = VIRTIO_F_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_VERSION_1
# Protocol features we use; CONFIG is required (the capacity comes from it).
WANTED = vu.PROTOCOL_REPLY_ACK | vu.PROTOCOL_CONFIG | vu.PROTOCOL_INFLIGHT_SHMFD | vu.PROTOCOL_MQ


class Handshake:
    """What a back end said when we connected: its features and its configuration space."""

    def __init__(self, features: int, protocol: int, config: bytes, queues: int) -> None:
        self.features, self.protocol, self.config, self.queues = features, protocol, config, queues


def handshake(conn: vu.Connection) -> Handshake:
    """SET_OWNER, features and protocol features, the configuration space; DeviceError,
    naming what is missing, for a back end that cannot serve a virtio-blk device."""
    where = f"vhost-user back end {conn.path}"
    features = conn.get_u64(vu.GET_FEATURES)
    if not features & VIRTIO_F_VERSION_1:
        raise DeviceError(f"{where} does not offer VIRTIO_F_VERSION_1 (virtio 1.x), which "
                          "qumran-vmm's PCI transport needs")  # fmt: skip
    if not features & vu.F_PROTOCOL_FEATURES:
        raise DeviceError(f"{where} does not offer VHOST_USER_F_PROTOCOL_FEATURES, so it "
                          "cannot report the disk's size (GET_CONFIG)")  # fmt: skip
    protocol = conn.get_u64(vu.GET_PROTOCOL_FEATURES)
    if not protocol & vu.PROTOCOL_CONFIG:
        raise DeviceError(f"{where} does not offer the CONFIG protocol feature, so it cannot"
                          " report the disk's size")  # fmt: skip
    protocol &= WANTED
    conn.set_u64(vu.SET_PROTOCOL_FEATURES, protocol)
    conn.reply_ack = bool(protocol & vu.PROTOCOL_REPLY_ACK)
    conn.call(vu.SET_OWNER, b"")
    config = bytearray(conn.get_config(CONFIG_SIZE))
    queues = 1
    if features & F_MQ:
        queues = max(1, int.from_bytes(config[NUM_QUEUES_OFFSET : NUM_QUEUES_OFFSET + 2], "little"))
        if protocol & vu.PROTOCOL_MQ:
            queues = min(queues, conn.get_u64(vu.GET_QUEUE_NUM))
        queues = min(queues, MAX_QUEUES)
        config[NUM_QUEUES_OFFSET : NUM_QUEUES_OFFSET + 2] = queues.to_bytes(2, "little")
    return Handshake(features, protocol, bytes(config), queues)


class VhostUserBackend:
    """One vhost-user-blk socket: connected before the guest starts, kept across reboots."""

    def __init__(self, path: str, conn: vu.Connection, hello: Handshake) -> None:
        self.path = path
        self._conn: vu.Connection | None = conn
        self.hello = hello
        self.reconnects = 0
        self._lock = threading.RLock()
        self._active: tuple[DeviceContext, KernelQueues] | None = None
        self._relays = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                        for _ in range(hello.queues)]  # fmt: skip
        self._calls: dict[int, int] = {}  # queue -> the call eventfd the back end has now
        self._running: list[int] = []  # queues the back end serves
        self._inflight: tuple[int, int, int] | None = None  # fd, size, offset
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._watcher = threading.Thread(target=self._watch, name="vhost-user", daemon=True)
        self._watcher.start()

    @classmethod
    def open(cls, path: str) -> VhostUserBackend:
        conn = vu.Connection.connect(path)
        try:
            hello = handshake(conn)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, hello)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def offerable(self) -> int:
        """The features the guest is offered: the back end's, as far as we pass them on."""
        return self.hello.features & (DEVICE_BITS | RING_BITS)

    # --- start and stop (vCPU threads, under the transport's lock) --------------------------

    def start(self, ctx: DeviceContext, kernel: KernelQueues) -> None:
        """Hand the ready queues to the back end; if it is away, they start on its return."""
        if kernel.ram_fd < 0:
            raise DeviceError("vhost-user needs guest RAM in a memfd")
        with self._lock:
            self._active = (ctx, kernel)
            for index, relay in enumerate(self._relays):
                relayed = functools.partial(_relay, relay, kernel.interrupt, index)
                ctx.loop.add_reader(relay, relayed)
            if self._conn is None:
                log.warning("%s: the back end is away; the disk waits for it", self.path)
                return
            try:
                self._start_rings(self._conn, ctx, kernel)
            except vu.Disconnected as exc:  # the watcher reconnects and starts them
                log.warning("%s; the disk waits for the back end", exc)

    def _start_rings(self, conn: vu.Connection, ctx: DeviceContext, kernel: KernelQueues) -> None:
        conn.set_u64(vu.SET_FEATURES, ctx.features | vu.F_PROTOCOL_FEATURES)
        if self.hello.protocol & vu.PROTOCOL_INFLIGHT_SHMFD:
            if self._inflight is None:
                self._inflight = conn.get_inflight_fd(len(ctx.queues), QUEUE_SIZE)
            fd, size, offset = self._inflight
            conn.set_inflight_fd(fd, size, offset, len(ctx.queues), QUEUE_SIZE)
        conn.set_mem_table(kernel.ram_fd, kernel.file_regions)
        ready = [i for i, q in enumerate(ctx.queues) if q.ready]
        self._calls = {}
        for index in ready:
            q, regions = ctx.queues[index], kernel.regions
            desc_len, avail_len, used_len = ring_sizes(q.size)
            conn.set_state(vu.SET_VRING_NUM, index, q.size)
            conn.set_state(vu.SET_VRING_BASE, index, q.last_avail)
            conn.set_vring_addr(index, host_address(regions, q.desc_addr, desc_len),
                                host_address(regions, q.used_addr, used_len),
                                host_address(regions, q.avail_addr, avail_len))  # fmt: skip
            self._set_call(conn, kernel, index)
            conn.set_vring_fd(vu.SET_VRING_KICK, index, kernel.kick_fds[index])
            conn.set_state(vu.SET_VRING_ENABLE, index, 1)
            self._running.append(index)
        for index in ready:  # chains made available before DRIVER_OK, or while away
            os.eventfd_write(kernel.kick_fds[index], 1)

    def update_calls(self) -> None:
        """The driver changed MSI-X (a mask, an address, enable): re-pick the call fds."""
        with self._lock:
            conn, active = self._conn, self._active
            if conn is None or active is None:
                return
            for index in list(self._calls):
                try:
                    self._set_call(conn, active[1], index)
                except DeviceError as exc:
                    log.warning("%s", exc)
                    return

    def _set_call(self, conn: vu.Connection, kernel: KernelQueues, index: int) -> None:
        direct = kernel.irqfd(index)
        fd = self._relays[index] if direct is None else direct
        if self._calls.get(index) != fd:
            conn.set_vring_fd(vu.SET_VRING_CALL, index, fd)
            self._calls[index] = fd

    def stop(self) -> None:
        """The device was reset (or the VM stops): take the rings back and forget the
        requests in flight. Safe when not started, or after a start that failed."""
        with self._lock:
            active, self._active = self._active, None
            conn = self._conn
            if active is not None and conn is not None:
                ctx = active[0]
                for index in self._running:
                    with contextlib.suppress(DeviceError):
                        conn.set_state(vu.SET_VRING_ENABLE, index, 0)
                        ctx.queues[index].last_avail = conn.get_vring_base(index)
            if active is not None:
                for relay in self._relays:
                    active[0].loop.remove_reader(relay)
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(relay)
            self._running, self._calls = [], {}
            self._drop_inflight()

    def _drop_inflight(self) -> None:
        if self._inflight is not None:
            os.close(self._inflight[0])
            self._inflight = None

    # --- the connection (watcher thread) ----------------------------------------------------

    def _watch(self) -> None:
        while True:
            conn = self._conn
            if conn is not None and not self._wait_hangup(conn):
                return
            if conn is not None:
                self._lost(conn)
            conn = self._reconnect()
            if conn is None:
                return
            self._resume(conn)

    def _wait_hangup(self, conn: vu.Connection) -> bool:
        """Block until the back end hangs up (True) or we are closing (False)."""
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLRDHUP)
        poller.register(self._stop, select.POLLIN)
        events = poller.poll()
        return all(fd != self._stop for fd, _ in events)

    def _lost(self, conn: vu.Connection) -> None:
        with self._lock:
            self._conn = None
            self._running, self._calls = [], {}
            conn.close()
        log.warning("%s: the vhost-user back end went away; reconnecting", self.path)

    def _reconnect(self) -> vu.Connection | None:
        """A connection with a finished handshake, or None once we are closing."""
        poller = select.poll()
        poller.register(self._stop, select.POLLIN)
        while True:
            try:
                conn = vu.Connection.connect(self.path)
                try:
                    hello = handshake(conn)
                except BaseException:
                    conn.close()
                    raise
            except DeviceError as exc:
                log.debug("%s", exc)
                if poller.poll(int(RETRY * 1000)):
                    return None
                continue
            if hello.features & self.hello.features != self.hello.features or (
                hello.queues != self.hello.queues
            ):
                log.error("%s: the back end came back with other features or queues; the "
                          "disk stays stopped", self.path)  # fmt: skip
                conn.close()
                if poller.poll(int(RETRY * 1000) * 10):
                    return None
                continue
            self.hello = hello
            return conn

    def _resume(self, conn: vu.Connection) -> None:
        """Back again: hand over the rings where the guest's completions stopped."""
        self.reconnects += 1
        active = self._active
        if active is None:
            with self._lock:
                self._conn = conn
            return
        ctx, kernel = active
        with ctx.lock, self._lock:
            self._conn = conn
            if self._active is not active:
                return
            for q in ctx.queues:  # redo what was not completed (the back end's inflight
                if q.ready:  # log, when it keeps one, knows better and wins)
                    q.last_avail = int.from_bytes(ctx.ram.view(q.used_addr + 2, 2), "little")
            try:
                self._start_rings(conn, ctx, kernel)
            except DeviceError as exc:
                log.error("%s: restarting the rings failed: %s", self.path, exc)
                return
        log.warning("%s: the vhost-user back end is back; the disk resumes", self.path)

    def close(self) -> None:
        self.stop()
        os.eventfd_write(self._stop, 1)
        if self._watcher.is_alive() and self._watcher is not threading.current_thread():
            self._watcher.join(5)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        for fd in [*self._relays, self._stop]:
            os.close(fd)
        self._relays, self._stop = [], -1


class VhostUserBlock(VirtioDevice):
    """The PCI-facing half of a disk whose requests a vhost-user back end serves."""

    device_id = DeviceId.BLOCK
    name = "virtio-blk"
    rings_in_kernel = True  # not the kernel here, but someone else: same transport path

    def __init__(self, backend: VhostUserBackend) -> None:
        super().__init__((QUEUE_SIZE,) * backend.hello.queues, 0, backend.hello.config)
        self.device_features = backend.offerable()
        self.backend = backend

    def activated(self, ctx: DeviceContext) -> None:
        assert ctx.kernel is not None
        try:
            self.backend.start(ctx, ctx.kernel)
        except DeviceError as exc:
            self.backend.stop()
            self.fail(str(exc))

    def vectors_changed(self) -> None:
        self.backend.update_calls()

    def reset(self) -> None:
        self.backend.stop()
        super().reset()

    def process(self, ctx: DeviceContext, index: int) -> None:
        """Never called: the back end serves the rings."""

    def status(self) -> dict[str, object]:
        capacity = int.from_bytes(self.config[:8], "little") * 512
        return {"type": "disk", "vhost_user": self.backend.path, "capacity": capacity,
                "connected": self.backend.connected, "reconnects": self.backend.reconnects,
                "readonly": bool(self.device_features & (1 << 5))}  # fmt: skip
