"""The libvirt side of ``bench/vs_create.py``: ``virt-install --import`` of a Debian image.

One run, timed from its first command to the first successful ``ssh``, the way a libvirt
user does it by hand:

1. ``qemu-img create`` a qcow2 overlay on the image (the image is never written);
2. the NoCloud seed: user-data and meta-data written, made into an ISO labelled
   ``cidata`` with ``xorrisofs`` and the options ``virt-install --cloud-init`` uses;
3. ``virt-install --import`` of both disks, q35, TCG, ``<cpu mode='maximum'/>``, 1 GiB,
   2 vCPUs, a serial port to a file, and the user-mode network Qumran's QEMU gets,
   passed through (libvirt's own ``<interface type='user'>`` has no port forwards);
4. ``ssh`` to the forwarded port until it succeeds.

Why not ``virt-install --cloud-init``: it puts its seed on a CD-ROM, which on q35 is a
SATA (AHCI) drive, and Debian's cloud kernel has no AHCI driver (``# CONFIG_SATA_AHCI is
not set``): measured here, the guest never sees the seed (``seed=dmi``, no user, no SSH).
Qumran hands its seed over as a read-only virtio-blk disk, so libvirt gets the same seed
the same way: ``--disk ...,bus=virtio,readonly=on``, made the way virt-install makes it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from qumran.images.cloudinit import generate_host_key
from vslib.consolewatch import ConsoleWatch
from vslib.guest import GUEST_USER, free_port, meta_data, user_data
from vslib.libvirt_stack import URI, VIRSH, LibvirtStack
from vslib.measure import cpu_seconds, now
from vslib.procs import timed, until_success

SSH_POLL = 0.25  # seconds between two ssh attempts
CLOUD_INIT_GRACE = 90.0  # seconds to wait after SSH for cloud-init's "finished" line


def ssh_argv(key: Path, port: int, command: str = "true") -> list[str]:
    return [
        "ssh", "-q", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null", "-i", str(key), "-p", str(port),
        f"{GUEST_USER}@127.0.0.1", command,
    ]  # fmt: skip


def virt_install_argv(
    name: str, overlay: Path, seed: Path, serial: Path, port: int, mac: str,
    memory_mib: int = 1024, vcpus: int = 2,
) -> list[str]:  # fmt: skip
    """The virt-install command: the machine Qumran's QEMU driver runs, nothing more.

    libvirt adds USB controllers, a memory balloon and 14 PCIe root ports by default;
    Qumran's machine has none of them, so they are switched off (a root port is still
    made for each libvirt-managed PCIe device). The passed-through NIC sits on pcie.0 at
    a slot of its own (libvirt allocates from slot 1 up and cannot see it).
    """
    netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"
    device = f"virtio-net-pci,netdev=net0,mac={mac},id=virtio-net0,bus=pcie.0,addr=0x10"
    return [
        "virt-install", "--connect", URI, "--name", name,
        "--memory", str(memory_mib), "--vcpus", str(vcpus),
        "--import", "--osinfo", "detect=on,require=off",
        "--virt-type", "qemu", "--machine", "q35", "--cpu", "mode=maximum",
        "--disk", f"path={overlay},format=qcow2,bus=virtio",
        "--disk", f"path={seed},device=disk,format=raw,bus=virtio,readonly=on",
        "--controller", "usb,model=none", "--controller", "num_pcie_root_ports=0",
        "--memballoon", "none", "--graphics", "none",
        "--serial", f"file,path={serial}",
        "--network", "none",
        # With "=": argparse would take a value starting with "-" for an option.
        f"--qemu-commandline=-netdev {netdev} -device {device}",
        "--noautoconsole",
    ]  # fmt: skip


class LibvirtCreate:
    def __init__(self, lv: LibvirtStack, root: Path, image: Path, key: Path) -> None:
        self.lv = lv
        self.root = root  # readable by libvirt-qemu (0755 all the way)
        self.image = image
        self.key = key  # the private key; key.pub beside it

    def run_dir(self, name: str) -> Path:
        return self.root / name

    def create_to_ssh(self, name: str, timeout: float = 900) -> dict[str, float]:
        """One run; seconds from the first command to each phase, CPU seconds used."""
        from qumran.drivers.qemu.cmdline import default_mac

        folder = self.run_dir(name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o755)
        overlay, seed, serial = folder / "disk.qcow2", folder / "seed.iso", folder / "serial.log"
        port = free_port()
        daemons = list(self.lv.daemon_pids().values())
        cpu0 = cpu_seconds(daemons)
        client = 0.0
        deadline = now() + timeout
        t0 = now()
        watch = ConsoleWatch(serial, t0)
        watch.start()
        try:
            client += timed([
                "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                "-b", str(self.image), str(overlay), "8G",
            ])  # fmt: skip
            overlay.chmod(0o644)
            t_disk = now()
            files = folder / "cidata"
            files.mkdir(mode=0o755)
            # As qumrand does for a VM: the guest's host key made beforehand, given in the
            # user-data (so neither guest spends its first boot generating keys).
            host_key = generate_host_key()
            public = self.key.with_suffix(".pub").read_text()
            (files / "user-data").write_text(user_data(public, host_key=host_key))
            (files / "meta-data").write_text(meta_data(f"iid-{name}-{t0:.0f}", name))
            client += timed([
                "xorrisofs", "-quiet", "-o", str(seed), "-J", "-input-charset", "utf8",
                "-rational-rock", "-V", "cidata", str(files),
            ])  # fmt: skip
            seed.chmod(0o644)
            t_seed = now()
            client += timed(
                virt_install_argv(name, overlay, seed, serial, port, default_mac(name, 0))
            )
            t_started = now()
            qemu_pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
            tries, ssh_cpu = until_success(ssh_argv(self.key, port), deadline, SSH_POLL)
            t_ssh = now()
            client += ssh_cpu
            times = {
                "ssh": t_ssh - t0,
                "disk": t_disk - t0,
                "seed": t_seed - t0,
                "started": t_started - t0,
                "ssh_tries": float(tries),
                "daemon_cpu": cpu_seconds(daemons) - cpu0,
                "client_cpu": client,
                "qemu_cpu": cpu_seconds([qemu_pid]),
            }
            # Not part of the time: when cloud-init finished, for the phase table (SSH
            # answers before cloud-init's last stage is done; `qumran create --wait` waits).
            watch.wait_for("cloud_init_done", CLOUD_INIT_GRACE)
        finally:
            watch.stop()
        times.update(watch.times())
        return times

    def remove(self, name: str) -> None:
        """Destroy and undefine the domain, remove the run's files."""
        subprocess.run([*VIRSH, "destroy", name], capture_output=True, timeout=120)
        subprocess.run([*VIRSH, "undefine", name], capture_output=True, timeout=120)
        shutil.rmtree(self.run_dir(name), ignore_errors=True)
