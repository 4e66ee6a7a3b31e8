"""`qumran image rm` keeps an image that volumes are overlays on (asking qumrand which),
unless --force; with no qumrand running there is nothing to ask, and it goes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon_harness import Daemon

QUMRAN = str(Path(sys.executable).parent / "qumran")


def qumran(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUMRAN, *args], capture_output=True, text=True, env=env, timeout=120)


def test_an_image_with_overlays_is_kept(fake_daemon: Daemon, tmp_path: Path) -> None:
    env = {**fake_daemon.env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    disk = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    assert qumran(env, "image", "import", "base", str(disk)).returncode == 0
    entry = tmp_path / "cache" / "qumran" / "images" / "base"
    # By path: qumrand looks for images by name in the home's cache, not XDG_CACHE_HOME.
    made = qumran(env, "vol-create", "web1", "64M", "--backing", str(entry / "disk.qcow2"))
    assert made.returncode == 0, made.stderr

    refused = qumran(env, "image", "rm", "base")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: image 'base' is the backing file of volume(s) "
                                     "default/web1")  # fmt: skip
    assert (entry / "image.json").is_file()

    assert qumran(env, "vol-delete", "web1").returncode == 0
    assert qumran(env, "image", "rm", "base").returncode == 0
    assert not entry.exists()


def test_force_removes_it_anyway(fake_daemon: Daemon, tmp_path: Path) -> None:
    env = {**fake_daemon.env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    disk = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    assert qumran(env, "image", "import", "base", str(disk)).returncode == 0
    entry = tmp_path / "cache" / "qumran" / "images" / "base"
    backing = str(entry / "disk.qcow2")
    assert qumran(env, "vol-create", "web1", "64M", "--backing", backing).returncode == 0
    assert qumran(env, "image", "rm", "base").returncode == 1
    assert qumran(env, "image", "rm", "base", "--force").returncode == 0
    assert not entry.exists()


def test_without_a_daemon_there_is_nothing_to_ask(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "QUMRAN_SOCKET": str(tmp_path / "none.sock"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}  # fmt: skip
    disk = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    assert qumran(env, "image", "import", "base", str(disk)).returncode == 0
    removed = qumran(env, "image", "rm", "base")
    assert removed.returncode == 0, removed.stderr
