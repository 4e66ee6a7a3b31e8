"""The real guest on qumran-vmm, as a user types it: `qumran create --hypervisor native`
with the Debian 12 image, then `qumran ssh` in.

Everything is real: qumrand with the native driver, the image's own kernel and initrd
(qumran-vmm has no firmware), its disk a qcow2 overlay volume served through
qemu-storage-daemon over vhost-user-blk, the cloud-init seed qumrand builds as a second,
read-only disk (handed over as an fd), passt for the user NIC with the SSH forward, and
the system ssh with the host key learnt from the console.

The image must have been built on the host (`qumran image build debian-12`; scripts/test
does it); inside the test host it is read from the host user's cache. A Debian first boot
with cloud-init under nested KVM in the TCG test host takes minutes (229 s to cloud-init's
end, ssh 4 s later, in a one-CPU test host; 289 s and 550 s in two-CPU ones on a loaded
machine), so this test runs only when QUMRAN_KVM_DEBIAN=1 is set (``_SLOW``), as the kvm
tier of scripts/test does. Its test hosts have one CPU (on two, the emulated nested paging
faults the guest most boots: tests/kvmhost/README.md, "Spurious page faults") and more
memory than the default, for the pool's free-space check on a 2 GiB volume (the test
host's /tmp is in RAM):

    QUMRAN_KVM_DEBIAN=1 python -m tests.kvmhost run --cpus 1 --timeout 2400 --memory 5120 -- \
        "$PWD/.venv/bin/pytest" -m kvm -s tests/kvm/test_debian_native.py
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest

from daemon_harness import Daemon
from qumran.images.cache import Image, ImageStore

_SLOW = os.environ.get("QUMRAN_KVM_DEBIAN") != "1"
pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(_SLOW, reason="minutes in the test host: set QUMRAN_KVM_DEBIAN=1"),
]

QUMRAN = str(Path(sys.executable).parent / "qumran")
IMAGE = "debian-12"
BOOT_TIMEOUT = 1500  # first boot with cloud-init, nested under TCG on a loaded machine


def _cache_bases() -> list[Path]:
    """Where the image may be: $XDG_CACHE_HOME, then the host user's ~/.cache (inside the
    test host HOME is /tmp, but the host's files are visible read-only)."""
    bases = [Path(os.environ["XDG_CACHE_HOME"])] if os.environ.get("XDG_CACHE_HOME") else []
    bases.append(Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache")
    return bases


@pytest.fixture(scope="module")
def image() -> tuple[Image, Path]:
    """The built image and the cache base (XDG_CACHE_HOME) `qumran create` finds it in."""
    for base in _cache_bases():
        found = ImageStore(base / "qumran" / "images").find(IMAGE)
        if found is not None and found.kernel is not None:
            return found, base
    pytest.fail(f"no {IMAGE} image built: run `qumran image build {IMAGE}` on the host")


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Daemon:
    for tool in ("passt", "qemu-storage-daemon", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    # The test host starts with its loopback down; passt's forward listens there.
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return cast(Daemon, request.getfixturevalue("kvm_daemon"))


def _run_files(daemon: Daemon) -> str:
    """The ends of the VM's console and process logs, and of qumrand's: what a failure
    needs to be understood, the test host being gone afterwards."""
    text = ""
    for path in [*sorted((daemon.root / "run").glob("vms/*/*.log")), daemon.log]:
        with contextlib.suppress(OSError):
            text += f"\n--- {path.name}:\n{path.read_text(errors='replace')[-6000:]}"
    return text


@pytest.mark.timeout(BOOT_TIMEOUT + 600)  # beyond the kvm tier's limit for one test
def test_create_native_then_ssh_in(
    daemon: Daemon, image: tuple[Image, Path], tmp_path: Path
) -> None:
    found, cache = image
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = {**daemon.env, "XDG_CACHE_HOME": str(cache), "XDG_DATA_HOME": str(tmp_path / "data")}

    def qumran(*args: str, timeout: float = 180) -> str:
        proc = subprocess.run([QUMRAN, *args], capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip
        if proc.returncode != 0:
            said = f"{proc.stderr}{proc.stdout[-2000:]}"
            pytest.fail(f"qumran {args[0]}: {said}{_run_files(daemon)}")
        return proc.stdout

    started = time.monotonic()
    out = qumran(
        "create", "web1", "--hypervisor", "native", "--image", found.name, "--memory", "768M",
        "--disk-size", "2G", "--ssh-key", f"{key}.pub", "--wait",
        "--timeout", str(BOOT_TIMEOUT), timeout=BOOT_TIMEOUT + 120,
    )  # fmt: skip
    ready = time.monotonic() - started
    assert "web1 is ready" in out, out
    uname = qumran("ssh", "web1", "-i", str(key), "--", "uname", "-a", timeout=300).strip()
    answered = time.monotonic() - started
    print(f"\nnative {IMAGE}: cloud-init done at {ready:.0f} s, ssh answered at {answered:.0f} s")
    assert uname.startswith("Linux web1 ") and uname.endswith("GNU/Linux"), uname
    qumran("destroy", "web1")
    daemon.wait_state("web1", "shutoff", timeout=90)
