"""libvirt's clients drive a real QEMU guest through qumrand: the demo VM defined from
domain XML with virsh, started, its console read and typed into through python3-libvirt's
stream, shut down by ACPI and watched stop with a lifecycle event."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from qumran.config import domxml
from qumran.config.files import read_definition
from qumran.config.validate import validate_spec
from qumran.images.demo import READY_LINE, build_demo

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("virsh") is None, reason="needs Debian's libvirt-clients"),
]

CLIENT = r"""
import libvirt, sys
uri, ready = sys.argv[1], sys.argv[2]
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open(uri)
events = []
conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                            lambda c, d, e, det, o: events.append((e, det)), None)
dom = conn.lookupByName("demo")
dom.create()
stream = conn.newStream(0)
dom.openConsole(None, stream, 0)
def read_until(text):
    seen = b""
    while text.encode() not in seen:
        data = stream.recv(4096)
        if not data:
            sys.exit(f"console closed before {text!r}: {seen[-500:]!r}")
        seen += data
    return seen
read_until(ready)
print("ready")
stream.send(b"echo hi-$((6*7))\n")
read_until("hi-42")
print("typed")
stream.finish()  # as virsh console does when it exits
dom.shutdown()
while (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN) not in events:
    libvirt.virEventRunDefaultImpl()
print("stopped", dom.state())
"""


@pytest.fixture(scope="module")
def qemu_daemon() -> Iterator[Daemon]:
    root = short_tmpdir()
    daemon = Daemon(root, driver="real")
    daemon.start()
    yield daemon
    daemon.cleanup()
    remove_tmpdir(root)


def test_demo_lifecycle_through_virsh_and_python3_libvirt(qemu_daemon: Daemon) -> None:
    image = build_demo()
    spec = validate_spec(read_definition(image.kernel.parent / "demo.yaml"))
    path = Path(qemu_daemon.root) / "demo.xml"
    path.write_text(domxml.to_xml("demo", "6f1c2a54-0d49-4f5e-9c39-3b4f6f1f0a11", spec))
    path.chmod(0o644)
    uri = f"qemu+unix:///system?socket={qemu_daemon.root / 'libvirt-sock'}"
    proc = subprocess.run(["virsh", "-c", uri, "define", str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert qemu_daemon.vm("demo")["uuid"] == "6f1c2a54-0d49-4f5e-9c39-3b4f6f1f0a11"
    proc = subprocess.run(["/usr/bin/python3", "-c", CLIENT, uri, READY_LINE],
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.splitlines() == ["ready", "typed", "stopped [5, 1]"]
    assert qemu_daemon.vm("demo")["state"] == "shutoff"


# docs/libvirt.md's virt-install command line: what it adds by default that a Qumran VM
# does not have, left out (the rest of what it writes describes q35 as Qumran runs it).
VIRT_INSTALL = ["--osinfo", "detect=on,require=off", "--noautoconsole",
                "--clock", "offset=utc,hpet_present=yes",
                "--pm", "suspend_to_mem.enabled=on,suspend_to_disk.enabled=on",
                "--controller", "usb,model=none",
                "--controller", "pci,model=pcie-root"]  # fmt: skip


@pytest.mark.skipif(shutil.which("virt-install") is None, reason="needs Debian's virtinst")
def test_virt_install_defines_and_starts_vms(qemu_daemon: Daemon) -> None:
    uri = f"qemu+unix:///system?socket={qemu_daemon.root / 'libvirt-sock'}"

    def run(*argv: str) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    image = build_demo()
    run("virt-install", "--connect", uri, "--name", "vi-demo", "--memory", "128", "--import",
        "--boot", f"kernel={image.kernel},initrd={image.initrd},kernel_args={image.cmdline}",
        "--disk", "none", "--network", "none", "--graphics", "none", *VIRT_INSTALL)  # fmt: skip
    run("virsh", "-c", uri, "vol-create-as", "default", "vi-disk.qcow2", "64M", "--format", "qcow2")
    run("virt-install", "--connect", uri, "--name", "vi-disk", "--memory", "128", "--import",
        "--disk", "vol=default/vi-disk.qcow2,bus=virtio", "--network", "user,model=virtio",
        "--graphics", "vnc", *VIRT_INSTALL)  # fmt: skip
    running = run("virsh", "-c", uri, "list", "--state-running", "--name").split()
    assert {"vi-demo", "vi-disk"} <= set(running)
    # The demo guest boots to its ready line on the serial console virt-install asked for.
    qemu_daemon.wait_state("vi-demo", "running")
    log = next((qemu_daemon.root / "run" / "vms").glob("*/console.log"))
    deadline = time.monotonic() + 180
    while READY_LINE not in "".join(p.read_text(errors="replace") for p in
                                    (qemu_daemon.root / "run" / "vms").glob("*/console.log")):
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
        time.sleep(0.5)
    for name in ("vi-demo", "vi-disk"):
        run("virsh", "-c", uri, "destroy", name)
        run("virsh", "-c", uri, "undefine", name)
