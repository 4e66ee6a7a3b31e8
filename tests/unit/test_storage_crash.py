"""qumrand killed with -9 in the middle of a copy: no half volume, the source untouched.

A clone (and an import) writes a hidden ``.NEW.part-*`` file and links it in under NEW
only when complete; qemu-img runs under ``--pdeathsig KILL``, so it dies with qumrand.
After the restart nothing half-written is listed, the leftover is gone, the source has
the same bytes, and qemu-img finds every volume clean.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from daemon_harness import Daemon, descendants
from storage_cli import QUMRAN, names, ok, qemu_img_check

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runs a root qumrand's pools"),
]

DATA_MIB = 1536  # enough written data that copying it takes a few seconds here


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def big_qcow2(where: Path) -> Path:
    """A 4 GiB qcow2 with DATA_MIB MiB of data that does not compress to zeroes."""
    raw = where / "data.raw"
    with raw.open("wb") as f:
        f.truncate(4 << 30)
        block = bytes(range(256)) * 4096  # 1 MiB, not zero: qemu-img must copy it
        for i in range(DATA_MIB):
            f.seek(i * 2 << 20)  # every other MiB: sparse in between
            f.write(block[i % 256 :] + block[: i % 256])
    image = where / "big.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)],
                   check=True)  # fmt: skip
    raw.unlink()
    return image


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def part_files(pool: Path, name: str) -> list[Path]:
    return list(pool.glob(f".{name}.part-*"))


@pytest.mark.parametrize("action", ["clone", "import"])
def test_kill_9_in_the_middle_of_a_copy(fake_daemon: Daemon, tmp_path: Path, action: str) -> None:
    d = fake_daemon
    source = big_qcow2(tmp_path)
    ok(d, "vol-import", "big", str(source))
    pool = Path(ok(d, "pool-info", "default")["path"])
    before = {"big": digest(pool / "big"), "file": digest(source)}

    argv = ["vol-clone", "big", "copy"] if action == "clone" else ["vol-import", "copy",
                                                                    str(source)]  # fmt: skip
    cli = subprocess.Popen([QUMRAN, *argv], env=d.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)  # fmt: skip
    assert d.proc is not None
    daemon_pid = d.proc.pid
    # Wait until qemu-img has written a good part of the copy, then kill qumrand.
    wait_for(lambda: any(p.stat().st_blocks * 512 > 64 << 20 for p in part_files(pool, "copy")))
    helpers = descendants(daemon_pid)
    d.stop(signal.SIGKILL)
    cli.communicate(timeout=30)
    assert cli.returncode != 0  # the client was never told it worked
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in helpers))
    assert not (pool / "copy").exists()
    assert part_files(pool, "copy")  # the leftover is there until qumrand starts again

    d.start()
    assert names(d) == ["big"]  # no half volume listed
    assert part_files(pool, "copy") == []  # and the leftover removed
    assert {"big": digest(pool / "big"), "file": digest(source)} == before
    qemu_img_check(str(pool / "big"))
    done = ok(d, *argv)  # and the copy, tried again, works
    qemu_img_check(done["path"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False
