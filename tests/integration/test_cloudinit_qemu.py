"""A real guest configured by its definition's ``cloud_init:`` section, and reached by SSH
through a port forward of its user-mode NIC: qumran CLI -> qumrand -> QEMU (TCG) -> the
debian-12 image.

qumrand builds the NoCloud seed at start and hands it to QEMU as a read-only disk; the
guest's cloud-init sets the host name, creates the user with the test's SSH key, runs the
``runcmd`` and prints the SSH host keys and its final message on the serial console. The
host key the console showed is then the only one ssh accepts (StrictHostKeyChecking=yes
against a known_hosts made from it), which is what ``qumran ssh`` does. One boot: TCG on a
shared 2-core machine takes 70-95 s to reach cloud-init's end.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from qumran.images import tools
from qumran.images.cache import Image

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(tools.find("qemu-system-x86_64") is None, reason="needs QEMU"),
    pytest.mark.skipif(tools.find("ssh") is None, reason="needs the OpenSSH client"),
    pytest.mark.skipif(
        bool(tools.missing(tools.BUILD_TOOLS, grub_pc=True)),
        reason="needs the image build tools (scripts/setup.sh --test installs them)",
    ),
]

QUMRAN = str(Path(sys.executable).parent / "qumran")
BOOT_TIMEOUT = 480  # seconds; TCG boots in 70-95 s, under the suite's 600 s test timeout
HOSTNAME = "qumran-ci-guest"
MARKER = "QUMRAN-SEED-RUNCMD-OK"
# What cloud-init 22.4 (Debian 12) prints on the console: its keys-to-console module
# (write-ssh-key-fingerprints) and then its final_message. docs/definitions.md.
KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
KEYS_END = "-----END SSH HOST KEY KEYS-----"
FINISHED = re.compile(r"Cloud-init v\. \S+ finished at ")


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    root = short_tmpdir()
    d = Daemon(root, driver="real")
    d.start()
    yield d
    d.cleanup()
    remove_tmpdir(root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qumran(daemon: Daemon, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QUMRAN, *args], capture_output=True, text=True, env=daemon.env, timeout=timeout
    )


def host_keys(console: str) -> list[str]:
    """The key lines of the console's SSH HOST KEY KEYS block."""
    lines = [line.strip() for line in console.replace("\r", "").split("\n")]
    begin, end = lines.index(KEYS_BEGIN), lines.index(KEYS_END)
    return [line for line in lines[begin + 1 : end] if line]


def test_a_seeded_debian_guest_takes_its_hostname_user_and_key_and_answers_ssh(
    debian_image: Image, daemon: Daemon, tmp_path: Path
) -> None:
    overlay = tmp_path / "web.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
         "-b", str(debian_image.disk), str(overlay)],
        check=True,
    )  # fmt: skip
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    definition = {
        "name": "seeded",
        "memory": "1G",
        "boot": {"disk": 0},
        "disks": [{"path": str(overlay), "format": "qcow2"}],
        "nics": [{"type": "user", "forward": [f"tcp:127.0.0.1:{port}-:22"]}],
        "cloud_init": {
            "hostname": HOSTNAME,
            "users": [
                {
                    "name": "debian",
                    "ssh_authorized_keys": [key.with_suffix(".pub").read_text().strip()],
                }
            ],
            "runcmd": [f"echo {MARKER} > /dev/console"],
        },
    }
    path = tmp_path / "seeded.json"
    path.write_text(json.dumps(definition))
    proc = qumran(daemon, "define", str(path))
    assert proc.returncode == 0, proc.stderr

    # Attached from the start: every byte the guest prints counts. cloud-init's final
    # message comes after the host keys (keys-to-console runs before final-message).
    proc = qumran(
        daemon, "start", "seeded", "--console", "--until", " finished at ",
        "--timeout", str(BOOT_TIMEOUT), timeout=BOOT_TIMEOUT + 60,
    )  # fmt: skip
    console = proc.stdout
    assert proc.returncode == 0, f"{proc.stderr}\n{console[-3000:]}"
    print(f"\n--- console tail ---\n{console[-4000:]}")

    assert f"{HOSTNAME} login:" in console
    assert MARKER in console
    assert FINISHED.search(console)
    keys = host_keys(console)
    assert keys and all(k.split()[0].startswith(("ssh-", "ecdsa-")) for k in keys), keys
    # What the guest printed is the one key qumrand made for it and the API shows.
    assert [" ".join(k.split()[:2]) for k in keys] == daemon.vm("seeded")["ssh_host_keys"]

    # ssh trusts exactly the host keys cloud-init printed, and logs in with the test's key.
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("".join(f"[127.0.0.1]:{port} {' '.join(k.split()[:2])}\n" for k in keys))
    ssh = [
        "ssh", "-i", str(key), "-p", str(port),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30",
        "debian@127.0.0.1",
    ]  # fmt: skip
    done = subprocess.run([*ssh, "hostname; id -un"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [HOSTNAME, "debian"]

    # A different host key is refused: the check is real.
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fake = other.with_suffix(".pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(fake)}\n")
    refused = subprocess.run(
        [*ssh, "-o", "HostKeyAlgorithms=ssh-ed25519", "true"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr

    assert qumran(daemon, "destroy", "seeded").returncode == 0
