"""virtio-net on passt: the length-prefixed stream both ways on a socket pair, the
``--net passt`` option, and the real passt started, refused and gone with its socket."""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from virtio_rings import PlainRam, RingBuilder

from qumran.vmm.devices.errors import DeviceError
from qumran.vmm.devices.virtio import passt_link
from qumran.vmm.devices.virtio.backends import NetSpec, parse_net
from qumran.vmm.devices.virtio.device import DeviceContext
from qumran.vmm.devices.virtio.ioloop import IoLoop
from qumran.vmm.devices.virtio.net import F_MRG_RXBUF
from qumran.vmm.devices.virtio.passt import F_MTU, PasstNet
from qumran.vmm.devices.virtio.passt_link import MTU, PasstForward, PasstLink, PasstSpec
from qumran.vmm.devices.virtio.tap import NET_HDR_LEN

HDR = bytes(NET_HDR_LEN)


class Guest:
    """A PasstNet on one end of a stream socket pair (the other plays passt)."""

    def __init__(self, features: int = 0, size: int = 64, tx_size: int = 64,
                 kind: socket.SocketKind = socket.SOCK_STREAM) -> None:  # fmt: skip
        ours, self.peer = socket.socketpair(socket.AF_UNIX, kind)
        self.peer.settimeout(5)  # a lost frame fails the test instead of hanging it
        self.link = PasstLink(ours, ())
        self.dev = PasstNet(self.link, bytes.fromhex("525400123456"))
        self.ram = PlainRam(4 << 20)
        self.rx, self.tx = RingBuilder(self.ram, size), RingBuilder(self.ram, tx_size)
        self.tx.DESC, self.tx.AVAIL, self.tx.USED = 0x100000, 0x110000, 0x120000
        self.rx.BUFFERS = self.rx.next_buf = 0x10000
        self.tx.BUFFERS = self.tx.next_buf = 0x200000
        self.interrupts: list[int] = []
        self.loop = IoLoop()
        queues = [self.rx.queue(), self.tx.queue()]
        irq = self.interrupts.append
        self.ctx = DeviceContext(self.ram, queues, features | 1 << 32, self.loop, irq,
                                 pytest.fail, threading.RLock())  # fmt: skip
        self.dev.activate(self.ctx)

    def recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.peer.recv(n - len(data))
            assert chunk, "passt's end saw the stream close"
            data += chunk
        return data

    def close(self) -> None:
        self.dev.reset()
        self.loop.stop()
        self.peer.close()
        self.link.close()


@pytest.fixture
def guest() -> Iterator[Guest]:
    g = Guest()
    yield g
    g.close()


def _framed(*frames: bytes) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def test_the_device_offers_passts_mtu_and_no_offloads(guest: Guest) -> None:
    features = guest.dev.device_features
    assert features & F_MTU and features & F_MRG_RXBUF and not features & 1  # no F_CSUM
    assert struct.unpack_from("<H", guest.dev.config, 10)[0] == MTU == 65520


def test_transmit_sends_each_frame_behind_its_length_without_the_header(guest: Guest) -> None:
    frames = [bytes([i]) * (60 + 1000 * i) for i in range(5)]
    for frame in frames:  # the header in a buffer of its own, then split over two
        guest.tx.add_chain([HDR, frame[:30], frame[30:]])
    guest.tx.add_chain([HDR + frames[0]])  # header and frame in one buffer
    guest.dev.kick(1)
    assert guest.recv_exactly(len(_framed(*frames, frames[0]))) == _framed(*frames, frames[0])
    assert [n for _, n in guest.tx.used()] == [0] * 6
    assert guest.interrupts == [1]
    assert guest.dev.counters["tx_packets"] == 6


def test_receive_cuts_the_stream_into_frames_with_a_zeroed_header(guest: Guest) -> None:
    frames = [b"a" * 60, b"b" * 1500, b"c" * 100]
    stream = _framed(*frames)
    guest.peer.sendall(stream[:70])  # the second frame's length cut in two
    for _ in range(3):
        guest.rx.add_chain([], [NET_HDR_LEN + 1514])
    guest.dev.kick(0)
    assert [n for _, n in guest.rx.used()] == [NET_HDR_LEN + 60]
    guest.loop.start()  # the rest arrives through the I/O loop
    guest.peer.sendall(stream[70:])
    done = threading.Event()
    for _ in range(500):
        if len(guest.rx.used()) == 3:
            break
        done.wait(0.01)
    used = guest.rx.used()
    assert [n for _, n in used] == [NET_HDR_LEN + len(f) for f in frames]
    for i, frame in enumerate(frames):
        got = guest.rx.read(guest.rx.BUFFERS + i * (((NET_HDR_LEN + 1514) + 15) & ~15),
                            NET_HDR_LEN + len(frame))  # fmt: skip
        assert got == HDR[:10] + b"\x01\x00" + frame


def test_merged_buffers_take_a_64k_frame_and_count_them() -> None:
    guest = Guest(features=F_MRG_RXBUF, size=256)
    try:
        frame = bytes(range(256)) * 256  # 65536 bytes
        guest.peer.sendall(_framed(frame, b"ack"))
        for _ in range(20):  # 30,000 bytes: too little room yet, nothing is given
            guest.rx.add_chain([], [1500])
        guest.dev.kick(0)
        assert guest.rx.used() == [] and guest.interrupts == []
        for _ in range(30):
            guest.rx.add_chain([], [1500])
        guest.dev.kick(0)
        used = guest.rx.used()
        assert [n for _, n in used] == [1500] * 43 + [1048, NET_HDR_LEN + 3]
        got = b"".join(guest.rx.read(guest.rx.BUFFERS + 1504 * i, n)
                       for i, (_, n) in enumerate(used[:44]))  # fmt: skip
        assert got[10:12] == (44).to_bytes(2, "little") and got[12:] == frame
        assert guest.interrupts == [0]
    finally:
        guest.close()


def test_without_merged_buffers_a_frame_too_large_for_a_buffer_is_dropped(guest: Guest) -> None:
    guest.peer.sendall(_framed(b"x" * 3000, b"y" * 100))
    guest.rx.add_chain([], [NET_HDR_LEN + 1514])
    guest.dev.kick(0)
    assert [n for _, n in guest.rx.used()] == [NET_HDR_LEN + 100]
    assert guest.dev.counters["rx_dropped"] == 1


def test_a_length_beyond_any_frame_drops_the_link(guest: Guest) -> None:
    guest.peer.sendall((1 << 20).to_bytes(4, "big") + b"junk")
    guest.rx.add_chain([], [2000])
    guest.dev.kick(0)
    assert guest.rx.used() == [] and guest.dev.status()["link"] is False


def test_frames_the_guest_has_no_room_for_are_read_in_and_held() -> None:
    """passt drops a frame its socket cannot take at once: the device must read on while
    the guest's ring is empty, and give every frame later, in order."""
    guest = Guest(features=F_MRG_RXBUF, size=256)
    try:
        guest.peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)  # ~128 KB
        frames = [bytes([i]) * 60000 for i in range(15)]  # 900 KB: seven socketfuls
        guest.loop.start()
        guest.dev.kick(0)  # no buffers yet: the device watches passt's socket
        guest.peer.sendall(_framed(*frames))  # times out (5 s) if the device stops reading
        for _ in range(500):  # the last socketful is read in a moment later
            if guest.dev.status()["rx_held_peak"] == len(_framed(*frames)):
                break
            threading.Event().wait(0.01)
        assert guest.dev.status()["rx_held_peak"] == len(_framed(*frames))
        assert guest.rx.used() == [] and guest.dev.status()["rx_no_room"]
        for _ in range(256):
            guest.rx.add_chain([], [4096])
        guest.dev.kick(0)
        used = guest.rx.used()
        got = b"".join(guest.rx.read(guest.rx.BUFFERS + 4096 * i, n)
                       for i, (_, n) in enumerate(used))  # fmt: skip
        size = NET_HDR_LEN + 60000  # each frame behind its header, in 15 buffers
        received = [got[i : i + size] for i in range(0, len(got), size)]
        assert [r[10:12] for r in received] == [(15).to_bytes(2, "little")] * 15
        received = [r[NET_HDR_LEN:] for r in received]
        assert received == frames
    finally:
        guest.close()


def test_the_hold_stops_at_its_limit_and_gives_its_memory_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    link = PasstLink(ours, ())
    first = len(link.buf)
    monkeypatch.setattr(passt_link, "HOLD_MAX", 4 * first)
    data = bytes(range(256)) * (6 * first // 256)
    sender = threading.Thread(target=peer.sendall, args=(data,), daemon=True)
    sender.start()
    got = b""
    while (n := link.fill()) != -2:
        if n == -1:
            threading.Event().wait(0.005)
    assert len(link.buf) == 4 * first and link.end - link.start > 3 * first  # full: waits
    got += link.buf[link.start : link.end]
    link.start = link.end  # the guest took all of it
    while len(got) < len(data):
        n = link.fill()
        assert len(link.buf) == first  # back to its first size once empty
        if n > 0:
            got += link.buf[link.start : link.end]
            link.start = link.end
        else:
            threading.Event().wait(0.005)
    assert got == data
    sender.join(5)
    peer.close()
    link.close()


# --- the option ----------------------------------------------------------------------------


def test_net_passt_parses_mac_and_forwards() -> None:
    spec = parse_net("passt,mac=52:54:00:aa:bb:cc,forward=tcp:127.0.0.1:2222-:22,"
                     "forward=udp::5353-10.0.2.15:53")  # fmt: skip
    assert spec == PasstSpec("52:54:00:aa:bb:cc", (
        PasstForward("tcp", "127.0.0.1", 2222, 22), PasstForward("udp", "", 5353, 53)))  # fmt: skip
    assert [f.passt_args() for f in spec.forwards] == [["-t", "127.0.0.1/2222:22"],
                                                       ["-u", "5353:53"]]  # fmt: skip
    assert isinstance(parse_net("tap=qt0"), NetSpec) and parse_net("passt") == PasstSpec()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("passt,mac=01:00:00:00:00:01", "bad MAC address"),
        ("passt,color=red", "expected mac=MAC and forward=RULE"),
        ("passt,forward=tcp:2222:22", "is not PROTO:[HOSTADDR]:HOSTPORT-:GUESTPORT"),
        ("passt,forward=sctp::1-:2", "is not PROTO"),
        ("passt,forward=tcp::70000-:22", "is not PROTO"),
        ("passt,forward=tcp::2222-10.0.2.9:22", "passt forwards to the guest's own address"),
        ("passt,forward=tcp:localhost:2222-:22", "bad host address"),
    ],
)
def test_bad_passt_options_are_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(DeviceError, match=re.escape(message)) as info:
        parse_net(text)
    assert str(info.value).startswith(f"--net {text!r}")


# --- the real passt ------------------------------------------------------------------------

needs_passt = pytest.mark.skipif(shutil.which("passt") is None, reason="passt not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _passt_running(port: int) -> bool:
    out = subprocess.run(["pgrep", "-f", f"passt.*/{port}:22"], capture_output=True, text=True)
    return bool(out.stdout.strip())


@needs_passt
def test_passt_binds_the_forward_and_quits_when_its_socket_closes() -> None:
    port = _free_port()
    link = PasstLink.start_passt(PasstSpec(None, (PasstForward("tcp", "127.0.0.1", port, 22),)))
    try:
        # The forward is bound by the time start_passt returns: no wait, no retry.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        link.close()
    # passt reads end-of-stream and exits; its port is then free again.
    for _ in range(500):
        if not _passt_running(port):
            break
        threading.Event().wait(0.01)
    assert not _passt_running(port)


@needs_passt
def test_a_forwarded_port_in_use_fails_before_the_guest_starts() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        spec = PasstSpec(None, (PasstForward("tcp", "127.0.0.1", port, 22),))
        with pytest.raises(DeviceError) as info:
            PasstLink.start_passt(spec)
    message = str(info.value)
    assert message.startswith("--net passt: passt failed to start:"), message
    assert f"127.0.0.1/{port}:22" in message and "\n" not in message


def test_a_kick_with_more_buffers_than_sendmsg_takes_sends_every_frame_intact() -> None:
    """64 frames of 20 buffers each: 1,344 buffers with their lengths, over IOV_MAX (1,024).
    One sendmsg for all failed with EMSGSIZE before, and the link was dropped."""
    guest = Guest(tx_size=2048)
    try:
        frames = [bytes([i]) * 20 * 1500 for i in range(64)]
        for frame in frames:
            guest.tx.add_chain([HDR] + [frame[j : j + 1500] for j in range(0, len(frame), 1500)])
        want = _framed(*frames)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(guest.recv_exactly(len(want))))
        reader.start()  # as passt does: more than a socket buffer goes out in one kick
        guest.dev.kick(1)
        reader.join(30)
        assert got == [want]
        assert guest.dev.status()["link"] is True and guest.dev.counters["tx_packets"] == 64
    finally:
        guest.close()


def test_each_frame_goes_out_in_a_sendmsg_of_its_own() -> None:
    """On a SOCK_SEQPACKET pair every sendmsg arrives as one message: each must be one
    frame behind its length, as QEMU's stream netdev writes them (see _send_frame)."""
    guest = Guest(tx_size=256, kind=socket.SOCK_SEQPACKET)
    try:
        frames = [bytes([i]) * (60 + 4099 * i % 65494) for i in range(40)]
        for frame in frames:
            guest.tx.add_chain([HDR, frame[:100], frame[100:]])
        got: list[bytes] = []

        def read() -> None:
            while len(got) < len(frames):
                got.append(guest.peer.recv(1 << 17))

        reader = threading.Thread(target=read)
        reader.start()
        guest.dev.kick(1)
        reader.join(30)
        assert got == [_framed(f) for f in frames]
    finally:
        guest.close()


def _read_as_passt(sock: socket.socket, count: int, out: list[bytes], rests: list[int]) -> None:
    """Read frames as passt 0.0~git20230309 (Debian 12) does (tap.c, tap_handler_passt):
    take all that is queued; a frame cut at its end is completed by ONE more recv. What
    each completion needed goes to ``rests``; a short one ends the reading (passt drops the
    frames and is out of step), as do 1 to 4 bytes of a length left over."""
    while len(out) < count:
        if not select.select([sock], [], [], 10)[0]:
            return
        data = bytearray(sock.recv(8 << 20, socket.MSG_DONTWAIT))
        pos, parsed = 0, []
        while len(data) - pos > 4:
            length = int.from_bytes(data[pos : pos + 4], "big")
            pos += 4
            if length > len(data) - pos:
                rests.append(length - (len(data) - pos))
                data += sock.recv(rests[-1])
                if len(data) - pos != length:
                    return
            parsed.append(bytes(data[pos : pos + length]))
            pos += length
        if pos != len(data):
            return
        out += parsed


def test_passt_can_complete_every_frame_it_reads_in_part() -> None:
    """The kernel queues a stream sendmsg in pieces (36,544 bytes on Linux 6.1), which a
    reader takes whole, and passt completes a partly read frame with one recv: the rest
    of a frame must be one piece, as it is when each frame starts a sendmsg (at most two
    pieces). Frames packed in one sendmsg were cut anywhere: rests of up to a whole frame,
    and passt lost frames (a guest-to-host transfer came up short)."""
    guest = Guest(tx_size=1024)
    try:
        frames = [bytes([i % 251]) * (MTU + 14) for i in range(480)]
        out: list[bytes] = []
        rests: list[int] = []
        reader = threading.Thread(target=_read_as_passt, args=(guest.peer, len(frames), out, rests))
        reader.start()
        for start in range(0, len(frames), 24):  # 1.5 MiB a kick: the TX buffers' room
            for frame in frames[start : start + 24]:
                guest.tx.add_chain([HDR, frame])
            guest.dev.kick(1)
        reader.join(60)
        assert rests, "no frame was read in part: nothing tested"
        assert max(rests) <= (4 + MTU + 14) // 2, sorted(rests)[-5:]
        assert out == frames
    finally:
        guest.close()


@needs_passt
def test_passt_starts_on_a_host_without_a_default_route(tmp_path: Path) -> None:
    """In a network namespace with only the loopback (an offline host, the KVM test host),
    passt alone refuses to start; the VMM gives it the loopback instead."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"qpnoroute{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        code = ("import sys; from qumran.vmm.devices.virtio.passt_link import *;"
                "l = PasstLink.start_passt(PasstSpec(None, (PasstForward('tcp', '127.0.0.1',"
                " 2222, 22),))); import socket; socket.create_connection(('127.0.0.1', 2222),"
                " timeout=5).close(); print('forward bound'); l.close()")  # fmt: skip
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.stdout.strip() == "forward bound", done.stderr
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
