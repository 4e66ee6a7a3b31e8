"""The credentials thread: a user's rights for a few opens, and only on that thread.

Run as root (the switch needs it); the system call numbers are checked everywhere.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from qumran.drivers.asuser import SYSCALLS, groups_of, run_as

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switches credentials; needs root")


def task_ids(tid: int) -> dict[str, list[int]]:
    """One thread's Uid, Gid and Groups lines from /proc: (real, effective, saved, fs)."""
    status = Path(f"/proc/self/task/{tid}/status").read_text()
    found = {}
    for key in ("Uid", "Gid", "Groups"):
        match = re.search(rf"^{key}:(.*)$", status, re.MULTILINE)
        assert match is not None
        found[key] = [int(x) for x in match.group(1).split()]
    return found


def test_syscall_numbers_match_the_kernel_headers() -> None:
    header = {
        "x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
        "aarch64": "/usr/include/asm-generic/unistd.h",
    }.get(platform.machine())
    if header is None or not os.path.exists(header):
        pytest.skip("no kernel headers for this machine")
    text = Path(header).read_text()
    for name, number in SYSCALLS[platform.machine()].items():
        assert re.search(rf"#define __NR_{name}\s+{number}\b", text), name


@as_root
def test_only_the_credentials_thread_changes_and_it_changes_back() -> None:
    me = threading.get_native_id()
    before = task_ids(me)
    inside = threading.Event()
    checked = threading.Event()
    seen: dict[str, object] = {}

    def as_nobody() -> int:
        seen["tid"] = threading.get_native_id()
        seen["ids"] = task_ids(threading.get_native_id())
        inside.set()
        assert checked.wait(10)  # hold the user's rights while the other threads look
        return os.geteuid()

    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(run_as(NOBODY, NOBODY, as_nobody)))
    runner.start()
    assert inside.wait(10)
    # While the credentials thread is nobody, this thread and the caller's are root.
    assert task_ids(me) == before
    assert task_ids(runner.native_id or 0)["Uid"] == before["Uid"]
    assert os.geteuid() == 0
    checked.set()
    runner.join(10)
    assert result == [NOBODY]
    ids = seen["ids"]
    assert isinstance(ids, dict)
    # The effective and filesystem ids are the user's; the real and saved stay root's.
    assert ids["Uid"] == [before["Uid"][0], NOBODY, before["Uid"][2], NOBODY]
    assert ids["Gid"] == [before["Gid"][0], NOBODY, before["Gid"][2], NOBODY]
    assert ids["Groups"] == sorted(groups_of(NOBODY, NOBODY))
    tid = seen["tid"]
    assert isinstance(tid, int) and tid != me
    assert task_ids(tid) == before  # the credentials thread is root again


@as_root
def test_a_root_only_file_cannot_be_read_through_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)

    def read() -> str:
        try:
            return Path(secret).read_text()
        except PermissionError:
            return "denied"

    assert run_as(NOBODY, NOBODY, read) == "denied"
    assert run_as(0, 0, read) == "root only"
    assert read() == "root only"  # and the caller's rights are as they were


@as_root
def test_errors_in_the_function_come_back_and_rights_are_restored() -> None:
    def fail() -> None:
        raise ValueError("from the user's side")

    with pytest.raises(ValueError, match="from the user's side"):
        run_as(NOBODY, NOBODY, fail)
    assert run_as(NOBODY, NOBODY, os.geteuid) == NOBODY
    assert run_as(NOBODY, NOBODY, lambda: task_ids(threading.get_native_id())["Uid"][1]) == NOBODY


def test_the_daemons_own_uid_runs_in_place() -> None:
    assert run_as(os.geteuid(), os.getegid(), threading.get_native_id) == threading.get_native_id()


@as_root
def test_a_daemon_that_is_not_root_checks_with_its_own_rights(daemon_root: Path) -> None:
    """A per-user qumrand cannot act as anyone else; its VMs run as it, so its own
    rights are the ones to check with, and the answer names its own uid."""
    secret = daemon_root / "secret"  # in a folder everyone may search (0755)
    secret.write_text("root only")
    secret.chmod(0o600)
    readable = daemon_root / "readable"
    readable.write_text("anyone")
    script = (
        "import sys\n"
        "from qumran.config.validate import validate_spec\n"
        "from qumran.drivers.base import Owner\n"
        "from qumran.drivers.checks import check_files\n"
        "from qumran.errors import InvalidArgument\n"
        "for path in sys.argv[1:]:\n"
        "    doc = {'name': 'a', 'memory': 64, 'boot': {'kernel': path}}\n"
        "    try:\n"
        "        check_files(validate_spec(doc), Owner(0, 0))\n"
        "        print('accepted')\n"
        "    except InvalidArgument as exc:\n"
        "        print(exc.message)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(readable), str(secret)],
        capture_output=True, text=True, timeout=30, user=NOBODY, group=NOBODY, extra_groups=[],
    )  # fmt: skip
    lines = run.stdout.splitlines()
    assert lines[0] == "accepted", run.stderr
    assert lines[1].startswith(f"boot.kernel: {secret} cannot be opened by uid {NOBODY} (")
