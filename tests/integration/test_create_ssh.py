"""From an image to a shell, as a user types it: `qumran create --wait`, then `qumran ssh`.

A real qumrand with the QEMU driver (TCG), the Debian 12 image built once and cached, a
real cloud-init first boot from the NoCloud seed qumrand attaches, and the system ssh
with the host key learnt from the console. Then the guest's disk is checked to keep what
was written across a reboot and across a shutdown and a new start. The tests run in file
order on one VM, like a user at a terminal; each boot under TCG takes a minute or two.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from qumran.images import tools
from qumran.images.cache import Image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(tools.find("qemu-system-x86_64") is None, reason="needs QEMU"),
]

QUMRAN = str(Path(sys.executable).parent / "qumran")
BOOT_TIMEOUT = 600  # TCG on a shared 2-core machine: a first boot with cloud-init ~2 min
DISK_SIZE = 6 << 30
DONE = "finished at"  # cloud-init's final message, every boot


class Session:
    """The user's side: their daemon's socket, their SSH key, their known_hosts."""

    def __init__(self, daemon: Daemon, home: Path) -> None:
        self.daemon = daemon
        self.key = home / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
                       check=True)  # fmt: skip
        self.env = {**daemon.env, "XDG_DATA_HOME": str(home / "data")}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([QUMRAN, *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip

    def ok(self, *args: str, timeout: float = 120) -> str:
        proc = self.run(*args, timeout=timeout)
        assert proc.returncode == 0, f"qumran {' '.join(args)}: {proc.stderr}{proc.stdout[-3000:]}"
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("--json", *args))

    def ssh(self, command: str) -> str:
        out = self.ok("ssh", "web1", "-i", str(self.key), "--", command, timeout=120)
        return out.strip()

    def until_ready(self) -> None:
        """Waits for cloud-init's final message printed after this call."""
        self.ok("console", "web1", "--until", DONE, "--timeout", str(BOOT_TIMEOUT),
                timeout=BOOT_TIMEOUT + 30)  # fmt: skip


@pytest.fixture(scope="module")
def user(debian_image: Image) -> Iterator[Session]:
    root = short_tmpdir()
    daemon = Daemon(root, driver="real")
    daemon.start()
    yield Session(daemon, root)
    daemon.cleanup()
    remove_tmpdir(root)


def test_create_waits_for_cloud_init(user: Session, debian_image: Image) -> None:
    out = user.ok(
        "create", "web1", "--image", debian_image.name, "--memory", "1G", "--vcpus", "2",
        "--disk-size", "6G", "--ssh-key", f"{user.key}.pub", "--wait",
        "--timeout", str(BOOT_TIMEOUT), timeout=BOOT_TIMEOUT + 60,
    )  # fmt: skip
    assert f"SSH key: {user.key}.pub" in out
    assert "web1 is ready" in out
    vm = user.json("dominfo", "web1")
    assert vm["state"] == "running"
    assert vm["definition"]["cloud_init"]["users"][0]["name"] == "debian"
    # The host key qumrand gave the guest is kept, under an alias for this VM's uuid.
    known = Path(user.env["XDG_DATA_HOME"], "qumran", "known_hosts").read_text()
    assert f"qumran-web1-{vm['uuid'][:8]} {vm['ssh_host_keys'][0]}" in known


def test_the_disk_is_an_overlay_volume(user: Session, debian_image: Image) -> None:
    volumes = {v["name"]: v for v in user.json("vol-list")}
    disk = volumes["web1"]
    assert disk["format"] == "qcow2" and disk["capacity"] == DISK_SIZE
    assert disk["backing"] == str(debian_image.disk)
    assert "web1" in disk["used_by"]


def test_ssh_in_as_the_cloud_init_user(user: Session) -> None:
    assert user.ssh("hostname") == "web1"
    assert user.ssh("id -un") == "debian"
    assert user.ssh("sudo -n id -u") == "0"
    # growpart and resize2fs made the root file system fill the 6 GiB disk.
    size = int(user.ssh("df -B1 --output=size / | tail -1"))
    assert DISK_SIZE * 0.9 < size <= DISK_SIZE


def test_the_guest_has_the_host_key_qumrand_gave_it(user: Session) -> None:
    vm = user.json("dominfo", "web1")
    (key,) = vm["ssh_host_keys"]
    served = user.ssh("sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub")
    assert served.split()[:2] == key.split()
    assert user.ssh("ls /etc/ssh | grep -c '_key$'") == "1"  # no other type made


def test_a_changed_host_key_is_refused(user: Session) -> None:
    """The guest's sshd gets a key qumrand did not give it: `qumran ssh` refuses."""
    port = user.json("dominfo", "web1")["definition"]["nics"][0]["forward"][0]
    port = port.split(":")[2].split("-")[0]
    direct = ["ssh", "-i", str(user.key), "-p", port, "-o", "StrictHostKeyChecking=no",
              "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
              "debian@127.0.0.1"]  # fmt: skip
    keys = "/etc/ssh/ssh_host_ed25519_key"
    swap = (
        f"sudo sh -c 'cp -a {keys} /root/k && cp -a {keys}.pub /root/k.pub && "
        f'rm {keys}* && ssh-keygen -q -t ed25519 -N "" -f {keys} && systemctl restart ssh\''
    )
    subprocess.run([*direct, swap], check=True, timeout=120, capture_output=True)
    try:
        proc = user.run("ssh", "web1", "-i", str(user.key), "--", "true", timeout=120)
        assert proc.returncode == 255
        assert "HOST IDENTIFICATION HAS CHANGED" in proc.stderr
    finally:
        back = (
            f"sudo sh -c 'mv /root/k {keys} && mv /root/k.pub {keys}.pub && systemctl restart ssh'"
        )
        subprocess.run([*direct, back], check=True, timeout=120, capture_output=True)
    assert user.ssh("true") == ""


def test_a_file_survives_a_reboot(user: Session) -> None:
    user.ssh("echo kept-across-boots > ~/marker && sync")
    user.ok("reboot", "web1")
    user.until_ready()
    # ssh checks the host key strictly: had cloud-init taken this boot for a new instance,
    # it would have made new host keys and this would fail.
    assert user.ssh("cat ~/marker") == "kept-across-boots"


def test_a_file_survives_shutdown_and_start(user: Session) -> None:
    user.ok("shutdown", "web1")
    user.daemon.wait_state("web1", "shutoff", timeout=300)
    user.ok("start", "web1")
    user.until_ready()
    assert user.ssh("cat ~/marker") == "kept-across-boots"
    assert user.ssh("hostname") == "web1"


def test_the_volume_of_a_defined_vm_cannot_be_deleted(user: Session) -> None:
    proc = user.run("vol-delete", "web1")
    assert proc.returncode == 1 and "web1" in proc.stderr
    user.ok("destroy", "web1")
    user.ok("undefine", "web1")
    user.ok("vol-delete", "web1")
    assert "web1" not in {v["name"] for v in user.json("vol-list")}
