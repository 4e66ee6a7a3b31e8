"""The security tier: a root qumrand, two real ordinary users, and attacks made as them.

Each test makes an attack as user A, the way the issue that found it did, and then checks
the outcome — what A gained — not the mechanism the daemon uses to stop it. A step the
daemon makes impossible (a PermissionError when planting a symlink) is an attack stopped;
the test checks the outcome anyway. Helpers: security_tier.py (the CLI, the API and the web
manager as a user) and attacker.py (steps run as the attacker).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from attacker import as_user, read_bytes
from security_tier import USERS, Users, free_port

from daemon_harness import Daemon, system_user


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "security: attacks by a second real user on qumrand")


@pytest.fixture(scope="session")
def users() -> Users:
    if os.geteuid() != 0:
        pytest.skip("the security tier creates users and runs a root qumrand; run it as root")
    return Users(*(system_user(name) for name in USERS))


@pytest.fixture
def web_daemon(daemon_root: Path) -> Iterator[Daemon]:
    """qumrand with the fake driver and the web manager."""
    daemon = Daemon(daemon_root, driver="fake", web=f"127.0.0.1:{free_port()}")
    daemon.start()
    yield daemon
    daemon.cleanup()


@pytest.fixture
def qemu_daemon(daemon_root: Path) -> Iterator[Daemon]:
    """qumrand with the real drivers (QEMU, under TCG here)."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no qemu-system-x86_64")
    daemon = Daemon(daemon_root, driver="real", web=f"127.0.0.1:{free_port()}")
    daemon.start()
    yield daemon
    daemon.cleanup()


@pytest.fixture
def secret_file(users: Users) -> Iterator[tuple[Path, str]]:
    """A root-only file (0600 in a 0700 folder) holding a random secret A cannot read."""
    folder = Path(tempfile.mkdtemp(prefix="qsecret-"))
    secret = f"QUMRAN-SECRET-{secrets.token_hex(16)}"
    path = folder / "secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    assert as_user(users.a, read_bytes, str(path)) == "EACCES"
    yield path, secret
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    """An empty folder only root may write in (and only root may read)."""
    folder = Path(tempfile.mkdtemp(prefix="qrootonly-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def scratch(daemon_root: Path, users: Users) -> Path:
    """A folder of A's own, on the same file system as the daemon's run directory."""
    folder = daemon_root / "a-home"
    folder.mkdir(mode=0o700)
    os.chown(folder, users.a.pw_uid, users.a.pw_gid)
    return folder
