"""virtio-net's offload negotiation and its queues, on plain memory and a socket pair."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from virtio_rings import PlainRam, RingBuilder

from qumran.vmm.devices.virtio.device import DeviceContext
from qumran.vmm.devices.virtio.ioloop import IoLoop
from qumran.vmm.devices.virtio.net import (
    F_CSUM,
    F_GUEST_CSUM,
    F_GUEST_ECN,
    F_GUEST_TSO4,
    F_GUEST_TSO6,
    F_HOST_TSO4,
    F_HOST_TSO6,
    F_MRG_RXBUF,
    VirtioNet,
    offered_features,
    tap_offloads,
)
from qumran.vmm.devices.virtio.queue import DESC_F_NEXT, DESC_F_WRITE
from qumran.vmm.devices.virtio.tap import (
    NET_HDR_LEN,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    Tap,
)

ALL_TUN = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
GUEST_ALL = F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN


def test_transmit_offloads_are_offered_even_by_a_tap_without_offloads() -> None:
    features = offered_features(0)
    assert features & (F_CSUM | F_HOST_TSO4 | F_HOST_TSO6) == F_CSUM | F_HOST_TSO4 | F_HOST_TSO6
    assert features & GUEST_ALL == 0


def test_receive_offloads_follow_what_the_tap_supports() -> None:
    assert offered_features(ALL_TUN) & GUEST_ALL == GUEST_ALL
    assert offered_features(TUN_F_CSUM) & GUEST_ALL == F_GUEST_CSUM
    both = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    assert offered_features(both) & GUEST_ALL == F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6


@pytest.mark.parametrize(
    ("accepted", "offloads"),
    [
        (0, 0),
        (F_CSUM | F_HOST_TSO4, 0),  # transmit offloads need nothing from the TAP
        (F_GUEST_CSUM, TUN_F_CSUM),
        (GUEST_ALL, ALL_TUN),
        (F_GUEST_CSUM | F_GUEST_TSO6, TUN_F_CSUM | TUN_F_TSO6),
        # 5.1.3.1: TSO without GUEST_CSUM, ECN without TSO: the TAP would refuse (EINVAL)
        (F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN, 0),
        (F_GUEST_CSUM | F_GUEST_ECN, TUN_F_CSUM),
    ],
)
def test_tap_offloads_from_the_negotiated_features(accepted: int, offloads: int) -> None:
    assert tap_offloads(accepted) == offloads


class Guest:
    """A VirtioNet on one end of a datagram socket pair, with both rings in PlainRam."""

    def __init__(self, size: int = 64, features: int = GUEST_ALL) -> None:
        self.ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.peer.settimeout(5)  # a lost frame fails the test instead of hanging it
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # 64 KiB segments
        self.dev = VirtioNet(Tap("pair", self.ours.fileno()), bytes.fromhex("525400123456"))
        self.ram = PlainRam(4 << 20)
        self.rx, self.tx = RingBuilder(self.ram, size), RingBuilder(self.ram, size)
        self.tx.DESC, self.tx.AVAIL, self.tx.USED = 0x5000, 0x6000, 0x7000
        self.rx.BUFFERS = self.rx.next_buf = 0x10000
        self.tx.BUFFERS = self.tx.next_buf = 0x200000
        self.interrupts: list[int] = []
        self.loop = IoLoop()
        queues = [self.rx.queue(), self.tx.queue()]
        features |= 1 << 32
        irq = self.interrupts.append
        self.ctx = DeviceContext(self.ram, queues, features, self.loop, irq, pytest.fail,
                                 threading.RLock())  # fmt: skip
        self.dev.activate(self.ctx)

    def close(self) -> None:
        self.dev.reset()
        self.loop.stop()
        self.peer.close()
        self.ours.close()


@pytest.fixture
def guest() -> Iterator[Guest]:
    g = Guest()
    yield g
    g.close()


def _hdr(flags: int = 0, gso_type: int = 0, gso_size: int = 0) -> bytes:
    # 5.1.6 struct virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start,
    # csum_offset, num_buffers
    return struct.pack("<BBHHHHH", flags, gso_type, 54, gso_size, 34, 16, 0)


def test_a_batch_of_segments_goes_out_with_headers_unchanged_and_one_interrupt(
    guest: Guest,
) -> None:
    frames = [_hdr(1, 1, 1448) + bytes([i]) * 20000 for i in range(5)]  # NEEDS_CSUM, TCPV4
    for frame in frames:
        guest.tx.add_chain([frame[:NET_HDR_LEN], frame[NET_HDR_LEN:]])
    guest.dev.kick(1)
    assert [guest.peer.recv(30000) for _ in frames] == frames
    assert [n for _, n in guest.tx.used()] == [0] * 5
    assert guest.interrupts == [1]
    assert guest.dev.counters["tx_packets"] == 5 and guest.dev.counters["tx_bytes"] == 100000


def test_without_merged_buffers_one_segment_per_chain_and_num_buffers_1(
    guest: Guest,
) -> None:
    segments = [_hdr(1, 1, 1448) + bytes([i + 1]) * 65000 for i in range(3)]
    for segment in segments:
        guest.peer.send(segment)
    for _ in range(4):  # as Linux does: the header alone, then the data
        guest.rx.add_chain([], [NET_HDR_LEN, 16384, 49152])
    guest.dev.kick(0)
    used = guest.rx.used()
    assert [n for _, n in used] == [len(s) for s in segments]
    assert guest.interrupts == [0]
    for i, segment in enumerate(segments):
        start = guest.rx.BUFFERS + i * (16 + 16384 + 49152)
        hdr = guest.rx.read(start, NET_HDR_LEN)
        assert hdr[:10] == segment[:10] and hdr[10:] == b"\x01\x00"
        assert guest.rx.read(start + 16, 65000) == segment[NET_HDR_LEN:]
    # The fourth buffer waits for the next frame, which arrives through the I/O loop.
    guest.loop.start()
    guest.peer.send(_hdr() + b"late")
    for _ in range(200):
        if len(guest.rx.used()) == 4:
            break
        threading.Event().wait(0.01)
    assert guest.rx.used()[3][1] == NET_HDR_LEN + 4


def test_a_header_split_over_buffers_still_gets_num_buffers(guest: Guest) -> None:
    guest.peer.send(_hdr() + b"x" * 100)
    guest.rx.add_chain([], [4, 4, 4, 200])
    guest.dev.kick(0)
    ((_, n),) = guest.rx.used()
    base = guest.rx.BUFFERS
    header = b"".join(guest.rx.read(base + 16 * i, 4) for i in range(3))
    assert n == NET_HDR_LEN + 100 and header[10:] == b"\x01\x00"


def test_merged_buffers_spread_a_segment_over_chains_and_count_them() -> None:
    guest = Guest(features=GUEST_ALL | F_MRG_RXBUF)
    try:
        segment = _hdr(1, 1, 1448) + bytes(range(256)) * 254  # 65024 bytes
        guest.peer.send(segment)
        guest.peer.send(_hdr() + b"ack")
        for _ in range(20):  # 30,000 bytes: too little room for a 64 KiB segment yet
            guest.rx.add_chain([], [1500])
        guest.dev.kick(0)
        assert guest.rx.used() == [] and guest.interrupts == []
        for _ in range(30):
            guest.rx.add_chain([], [1500])
        guest.dev.kick(0)
        used = guest.rx.used()
        assert [n for _, n in used] == [1500] * 43 + [536]
        assert guest.interrupts == [0]
        got = b"".join(guest.rx.read(guest.rx.BUFFERS + 1504 * i, n) for i, (_, n) in
                       enumerate(used[:44]))  # fmt: skip
        assert got[:10] == segment[:10] and got[10:12] == (44).to_bytes(2, "little")
        assert got[12:] == segment[12:]
        # 6 chains left: the short frame waits for room for a segment again.
        for _ in range(40):
            guest.rx.add_chain([], [1500])
        guest.dev.kick(0)
        assert [n for _, n in guest.rx.used()[44:]] == [NET_HDR_LEN + 3]
        ack = guest.rx.read(guest.rx.BUFFERS + 1504 * 44, NET_HDR_LEN + 3)
        assert ack[10:12] == b"\x01\x00" and ack[12:] == b"ack"
    finally:
        guest.close()


def test_receive_buffers_in_more_pieces_than_readv_takes(guest: Guest) -> None:
    """A chain of 1,500 tiny buffers (through an indirect table): readv gets the first
    IOV_MAX of them. Before, readv failed with EINVAL on every wake-up and the device
    thread spun on the readable TAP."""
    from qumran.vmm.devices.virtio.net import IOV_MAX
    from qumran.vmm.devices.virtio.queue import DESC_F_INDIRECT

    guest.ctx.queues[0].indirect = True
    pieces, size = 1500, 48
    table, base = 0x300000, 0x310000
    for i in range(pieces):
        length = NET_HDR_LEN if i == 0 else size
        flags = DESC_F_WRITE | (DESC_F_NEXT if i < pieces - 1 else 0)
        struct.pack_into("<QIHH", guest.ram.data, table + 16 * i, base + 64 * i, length, flags,
                         i + 1)  # fmt: skip
    guest.rx.set_desc(0, table, 16 * pieces, DESC_F_INDIRECT)
    guest.rx.publish(0)
    # Larger than the first IOV_MAX pieces hold. A TAP reports the whole length and the
    # frame is dropped; this socket pair cuts the datagram to what was read.
    frame = _hdr() + bytes(range(256)) * (IOV_MAX * size // 256)
    guest.peer.send(frame)
    guest.dev.kick(0)
    room = NET_HDR_LEN + (IOV_MAX - 1) * size
    assert guest.rx.used() == [(0, room)]
    got = b"".join(guest.rx.read(base + 64 * i, size if i else NET_HDR_LEN) for i in range(4))
    assert got[NET_HDR_LEN:] == frame[NET_HDR_LEN : NET_HDR_LEN + 3 * size]
    assert guest.interrupts == [0]
