from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir


@pytest.fixture
def daemon_root() -> Iterator[Path]:
    root = short_tmpdir()
    yield root
    remove_tmpdir(root)


@pytest.fixture
def fake_daemon(daemon_root: Path) -> Iterator[Daemon]:
    """qumrand with the fake driver: real stand-in VM processes, no hypervisor."""
    daemon = Daemon(daemon_root, driver="fake")
    daemon.start()
    yield daemon
    daemon.cleanup()
