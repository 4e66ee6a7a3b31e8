"""kvm tier: qumran-vmm under a real KVM (inside the KVM test host).

Tests here need /dev/kvm on a CPU with VMX or SVM; elsewhere they skip. The demo guest
must have been built on the host first (``build_demo()``, as scripts/test does): inside
the test host the host's cache is found read-only through the shared root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from vmm_harness import Vmm

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from qumran.images.demo import DemoImage, build_demo, default_cache_dir


def hardware_kvm() -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tiny: a hand-made guest; runs on any /dev/kvm")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if hardware_kvm():
        return
    skip = pytest.mark.skip(reason="needs /dev/kvm on a CPU with vmx/svm (the KVM test host)")
    for item in items:
        if "kvm" in item.keywords and "tiny" not in item.keywords:
            item.add_marker(skip)


def _demo_dirs() -> list[Path]:
    dirs = [Path(d) for d in [os.environ.get("QUMRAN_DEMO_DIR", "")] if d]
    dirs.append(default_cache_dir())
    # Inside the test host HOME is /tmp; the host user's cache is still visible.
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    dirs.append(home / ".cache" / "qumran" / "images" / "demo")
    return dirs


@pytest.fixture(scope="session")
def demo() -> DemoImage:
    for d in _demo_dirs():
        if (d / "vmlinuz").is_file():
            return build_demo(d)
    return build_demo()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short path: UNIX socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="qvmm-"))
    yield path
    leftovers = [p.name for p in path.iterdir() if p.suffix == ".sock"]
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"sockets left behind: {leftovers}"


@pytest.fixture
def vmm_factory(workdir: Path) -> Iterator[Callable[..., Vmm]]:
    """Build (not start) a qumran-vmm process; every one is killed at teardown."""
    made: list[Vmm] = []

    def make(kernel: Path, **kwargs: object) -> Vmm:
        vmm = Vmm(workdir, kernel, **kwargs)  # type: ignore[arg-type]
        made.append(vmm)
        return vmm

    yield make
    for vmm in made:
        vmm.close()


@pytest.fixture
def kvm_daemon() -> Iterator[Daemon]:
    """A real-driver qumrand of the test's own. The first in a fresh test host imports
    FastAPI and pydantic under nested emulation, from a cold page cache, on a loaded
    machine: seen to take over 20 s, hence the long start timeout."""
    root = short_tmpdir()
    daemon = Daemon(root, driver="real", start_timeout=120)
    daemon.start()
    yield daemon
    daemon.cleanup()
    remove_tmpdir(root)
