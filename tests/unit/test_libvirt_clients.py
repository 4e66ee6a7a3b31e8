"""libvirt's own clients against a real qumrand: Debian's virsh and python3-libvirt.

qumrand runs with the fake driver (real stand-in VM processes); the clients are the
stock ones (libvirt 9.0.0), talking libvirt's remote protocol on qumrand's libvirt-sock.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import struct
import subprocess
import textwrap
from pathlib import Path

import pytest

from daemon_harness import Daemon, system_user
from libvirt_clients import XML, define, ok, state, uri, virsh

pytestmark = pytest.mark.skipif(
    shutil.which("virsh") is None or not Path("/usr/bin/python3").exists(),
    reason="needs Debian's libvirt-clients and python3-libvirt",
)

def test_the_whole_lifecycle_through_virsh(fake_daemon: Daemon, daemon_root: Path) -> None:
    define(fake_daemon, daemon_root)
    assert "web1" in ok(fake_daemon, "list", "--all")
    assert ok(fake_daemon, "list").count("web1") == 0  # only active ones
    info = ok(fake_daemon, "dominfo", "web1")
    assert "CPU(s):         2" in info and "Max memory:     65536 KiB" in info
    uuid = ok(fake_daemon, "domuuid", "web1").strip()
    assert uuid == fake_daemon.vm("web1")["uuid"]  # the Qumran VM's uuid as it is
    assert ok(fake_daemon, "domname", uuid).strip() == "web1"
    assert state(fake_daemon, "web1") == "shut off (unknown)"

    ok(fake_daemon, "start", "web1")
    vm = fake_daemon.vm("web1")
    assert vm["state"] == "running"
    assert ok(fake_daemon, "domid", "web1").strip() == str(vm["pid"])  # the id is the process
    assert state(fake_daemon, "web1") == "running (booted)"
    listed = ok(fake_daemon, "list")
    assert f" {vm['pid']}   web1   running" in listed

    ok(fake_daemon, "suspend", "web1")
    assert state(fake_daemon, "web1") == "paused (user)"
    ok(fake_daemon, "resume", "web1")
    assert state(fake_daemon, "web1") == "running (unpaused)"
    ok(fake_daemon, "reboot", "web1")
    ok(fake_daemon, "reset", "web1")
    ok(fake_daemon, "shutdown", "web1")
    assert state(fake_daemon, "web1").startswith(("in shutdown", "shut off"))
    fake_daemon.wait_state("web1", "shutoff")  # the guest powers off 0.1 s after
    ok(fake_daemon, "start", "web1")
    ok(fake_daemon, "destroy", "web1")
    assert state(fake_daemon, "web1") == "shut off (destroyed)"

    ok(fake_daemon, "autostart", "web1")
    assert fake_daemon.vm("web1")["autostart"] is True
    assert "Autostart:      enable" in ok(fake_daemon, "dominfo", "web1")
    ok(fake_daemon, "autostart", "--disable", "web1")
    assert fake_daemon.vm("web1")["autostart"] is False

    ok(fake_daemon, "undefine", "web1")
    assert fake_daemon.call("GET", "/v1/vms/web1").status_code == 404


def test_wrong_state_is_operation_invalid(fake_daemon: Daemon, daemon_root: Path) -> None:
    define(fake_daemon, daemon_root)
    proc = virsh(fake_daemon, "destroy", "web1")
    assert proc.returncode == 1
    assert "Requested operation is not valid" in proc.stderr and "not running" in proc.stderr
    ok(fake_daemon, "start", "web1")
    proc = virsh(fake_daemon, "undefine", "web1")
    assert proc.returncode == 1 and "Requested operation is not valid" in proc.stderr


def test_dumpxml_define_round_trip(fake_daemon: Daemon, daemon_root: Path) -> None:
    doc = {
        "name": "rt", "memory": 128, "vcpus": 2,
        "boot": {"kernel": "/bin/sh", "initrd": "/bin/true", "cmdline": "console=ttyS0 quiet"},
        "disks": [{"path": "/bin/ls", "readonly": True}],
        "nics": [{"type": "user", "mac": "52:54:00:12:34:56",
                  "forward": ["tcp:127.0.0.1:2222-:22"]}],
        "graphics": True,
    }  # fmt: skip
    response = fake_daemon.call("POST", "/v1/vms", json=doc)
    assert response.status_code == 201, response.text
    before = fake_daemon.vm("rt")
    xml = ok(fake_daemon, "dumpxml", "rt")
    assert f"<uuid>{before['uuid']}</uuid>" in xml
    assert "<source file=\"/bin/ls\" />" in xml and "<readonly />" in xml
    assert "tcp:127.0.0.1:2222-:22" in xml  # kept in Qumran's metadata
    ok(fake_daemon, "undefine", "rt")
    path = daemon_root / "rt.xml"
    path.write_text(xml)
    path.chmod(0o644)
    ok(fake_daemon, "define", str(path))
    after = fake_daemon.vm("rt")
    assert after["uuid"] == before["uuid"]
    assert after["definition"] == before["definition"]
    assert ok(fake_daemon, "dumpxml", "rt") == xml
    # Defining it again updates it (libvirt's define of a known domain).
    ok(fake_daemon, "define", str(path))


def test_xml_qumran_does_not_have_is_refused_naming_it(
    fake_daemon: Daemon, daemon_root: Path
) -> None:
    xml = XML.replace("</devices>", "<sound model='ich6'/></devices>").format(name="snd")
    path = daemon_root / "snd.xml"
    path.write_text(xml)
    path.chmod(0o644)
    proc = virsh(fake_daemon, "define", str(path))
    assert proc.returncode == 1
    assert "unsupported configuration: domain/devices/sound" in proc.stderr
    assert fake_daemon.call("GET", "/v1/vms/snd").status_code == 404
    path.write_text(XML.replace("<vcpu>2</vcpu>", "<vcpu>2</vcpu><on_crash>restart</on_crash>")
                    .format(name="snd"))  # fmt: skip
    proc = virsh(fake_daemon, "define", str(path))
    assert proc.returncode == 1 and "domain/on_crash" in proc.stderr


def test_unknown_domains(fake_daemon: Daemon) -> None:
    for args in (("dominfo", "nosuch"), ("start", "nosuch"), ("dumpxml", "nosuch")):
        proc = virsh(fake_daemon, *args)
        assert proc.returncode == 1, args
        assert "error: failed to get domain 'nosuch'" in proc.stderr, proc.stderr


def test_an_unimplemented_call_says_not_supported(fake_daemon: Daemon, daemon_root: Path) -> None:
    define(fake_daemon, daemon_root)
    proc = virsh(fake_daemon, "domblkinfo", "web1", "vda")
    assert proc.returncode == 1
    assert "this function is not supported by the connection driver" in proc.stderr
    assert "virDomainGetBlockInfo" in proc.stderr


PYTHON_CLIENT = """
import libvirt, sys, threading
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open(sys.argv[1])
events = []
def lifecycle(conn, dom, event, detail, opaque):
    events.append((dom.name(), event, detail))
conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None)
print("names", sorted(d.name() for d in conn.listAllDomains()))
dom = conn.lookupByName("web1")
print("info", dom.info()[:4], "state", dom.state())
dom.create()
print("running", dom.state(), dom.ID() > 0, dom.isActive())
dom.destroy()
print("stopped", dom.state())
while len(events) < 2:
    libvirt.virEventRunDefaultImpl()
print("events", events)
try:
    conn.lookupByName("nosuch")
except libvirt.libvirtError as e:
    print("error", e.get_error_code())
conn.close()
"""


def test_python3_libvirt(fake_daemon: Daemon, daemon_root: Path) -> None:
    define(fake_daemon, daemon_root)
    proc = subprocess.run(["/usr/bin/python3", "-c", PYTHON_CLIENT, uri(fake_daemon)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert out["names"] == "['web1']"
    assert out["info"] == "[5, 65536, 0, 2] state [5, 0]"
    assert out["running"] == "[1, 1] True 1"
    assert out["stopped"] == "[5, 2]"
    # started/booted, stopped/destroyed (virDomainEventType, the details)
    assert out["events"] == "[('web1', 2, 0), ('web1', 5, 1)]"
    assert out["error"] == "42"  # VIR_ERR_NO_DOMAIN


def test_ownership_with_two_real_users(fake_daemon: Daemon, daemon_root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creates users; needs root")
    t1, t2 = system_user("qumran-t1"), system_user("qumran-t2")
    path = define(fake_daemon, daemon_root, "rootvm")
    path = daemon_root / "t1vm.xml"
    path.write_text(XML.format(name="t1vm"))
    path.chmod(0o644)
    assert virsh(fake_daemon, "define", str(path), user=t1).returncode == 0
    assert fake_daemon.vm("t1vm")["owner"] == t1.pw_uid

    def names(user: pwd.struct_passwd | None) -> list[str]:
        proc = virsh(fake_daemon, "list", "--all", "--name", user=user)
        assert proc.returncode == 0, proc.stderr
        return sorted(line for line in proc.stdout.split() if line)

    assert names(t1) == ["t1vm"]
    assert names(t2) == []
    assert names(None) == ["rootvm", "t1vm"]
    for verb in ("start", "dominfo", "undefine", "dumpxml"):
        proc = virsh(fake_daemon, verb, "t1vm", user=t2)
        assert proc.returncode == 1, verb
        assert "belongs to another user" in proc.stderr or "failed to get domain" in proc.stderr
    assert virsh(fake_daemon, "start", "rootvm", user=t1).returncode == 1
    assert virsh(fake_daemon, "start", "t1vm", user=t1).returncode == 0
    pid = fake_daemon.vm("t1vm")["pid"]
    assert os.stat(f"/proc/{pid}").st_uid == t1.pw_uid  # runs as its owner
    ok(fake_daemon, "destroy", "t1vm")  # root manages all


def _connect(daemon: Daemon) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(str(daemon.root / "libvirt-sock"))
    return sock


def _recv_packet(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
    return sock.recv(length - 4, socket.MSG_WAITALL)


def test_hostile_packets_never_crash_the_daemon(fake_daemon: Daemon) -> None:
    # Over libvirt's 32 MiB limit: the connection is closed before anything is read.
    with _connect(fake_daemon) as sock:
        sock.sendall(struct.pack(">I", 0xFFFFFFF0))
        assert sock.recv(1) == b""
    # Shorter than a header.
    with _connect(fake_daemon) as sock:
        sock.sendall(struct.pack(">I", 8) + b"abcd")
        assert sock.recv(1) == b""
    # A call whose arguments do not decode: an RPC error, and the connection goes on.
    with _connect(fake_daemon) as sock:
        header = struct.pack(">IIiiIi", 0x20008086, 1, 1, 0, 5, 0)  # CONNECT_OPEN, serial 5
        args = struct.pack(">II", 1, 0xFFFFFFF0)  # a name of 4 GiB
        sock.sendall(struct.pack(">I", 4 + len(header) + len(args)) + header + args)
        reply = _recv_packet(sock)
        _, _, proc, ptype, serial, status = struct.unpack(">IIiiIi", reply[:24])
        assert (proc, ptype, serial, status) == (1, 1, 5, 1)  # a REPLY with ERROR
        assert struct.unpack(">i", reply[24:28])[0] == 39  # VIR_ERR_RPC
        # Keepalive still answered on the same connection: PING -> PONG.
        ping = struct.pack(">IIiiIi", 0x6B656570, 1, 1, 2, 0, 0)
        sock.sendall(struct.pack(">I", 28) + ping)
        assert struct.unpack(">IIiiIi", _recv_packet(sock)[:24])[2] == 2  # PONG
    # A packet announced but never finished: closed after the packet timeout, and the
    # daemon serves others meanwhile.
    with _connect(fake_daemon) as stalled:
        stalled.sendall(struct.pack(">I", 1000) + b"x" * 10)
        assert "web1" not in ok(fake_daemon, "list", "--all")
    assert fake_daemon.proc is not None and fake_daemon.proc.poll() is None
    assert ok(fake_daemon, "list", "--all")


def test_the_libvirt_socket_can_be_turned_off(daemon_root: Path) -> None:
    daemon = Daemon(daemon_root, driver="fake", options=("--no-libvirt",))
    daemon.start()
    try:
        assert not (daemon_root / "libvirt-sock").exists()
    finally:
        daemon.cleanup()


def test_define_example_from_the_docs(fake_daemon: Daemon, daemon_root: Path) -> None:
    xml = textwrap.dedent("""\
        <domain type='kvm'>
          <name>docs1</name>
          <memory unit='GiB'>1</memory>
          <currentMemory unit='GiB'>1</currentMemory>
          <vcpu placement='static'>1</vcpu>
          <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
          <features><acpi/><apic/></features>
          <clock offset='utc'/>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            <disk type='file' device='disk'>
              <driver name='qemu' type='raw'/>
              <source file='/bin/ls'/>
              <target dev='vda' bus='virtio'/>
            </disk>
            <interface type='user'><model type='virtio'/></interface>
            <graphics type='vnc' port='-1' autoport='yes'/>
          </devices>
        </domain>
    """)
    path = daemon_root / "docs1.xml"
    path.write_text(xml)
    path.chmod(0o644)
    ok(fake_daemon, "define", str(path))
    definition = fake_daemon.vm("docs1")["definition"]
    assert definition["boot"] == {"disk": 0}
    assert definition["memory"] == 1024 and definition["graphics"] is True
    assert definition["serial"] is False


def test_qumran_cli_dumpxml_and_define_xml(fake_daemon: Daemon, daemon_root: Path) -> None:
    import sys

    qumran = str(Path(sys.executable).parent / "qumran")
    env = {**os.environ, "QUMRAN_SOCKET": fake_daemon.socket}
    define(fake_daemon, daemon_root)
    uuid = fake_daemon.vm("web1")["uuid"]
    ours = subprocess.run([qumran, "dumpxml", "web1"], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.strip() == ok(fake_daemon, "dumpxml", "web1").strip()  # the same XML
    ok(fake_daemon, "undefine", "web1")
    path = daemon_root / "again.xml"
    path.write_text(ours.stdout)
    proc = subprocess.run([qumran, "define", "--xml", str(path)], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert fake_daemon.vm("web1")["uuid"] == uuid
    path.write_text(ours.stdout.replace("<devices>", "<devices><sound model='ich6'/>"))
    ok(fake_daemon, "undefine", "web1")
    proc = subprocess.run([qumran, "define", "--xml", str(path)], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert "domain/devices/sound: Qumran has no such setting" in proc.stderr
    assert "Traceback" not in proc.stderr
