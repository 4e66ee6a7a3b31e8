"""A new user's first hour: an ordinary account with no runtime folder (``su -``,
containers, ssh without a systemd login), created here and run through ``runuser``,
with no systemd around. qumrand falls back to a private /tmp/qumran-UID and says so; the
client finds it there; ``./scripts/demo`` runs to the end (the fake driver boots a
stand-in VM) and leaves the commands on the user's PATH; a qumrand that cannot start shows
the end of its log, not a traceback.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USER = "qumran-newuser"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a user; needs root")


def processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
    return pids


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    with contextlib.suppress(KeyError):
        pwd.getpwnam(USER)
        subprocess.run(["userdel", "-r", USER], check=False, capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
    account = pwd.getpwnam(USER)
    yield account
    for pid in processes_of(account.pw_uid):  # what this test started as the user
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(f"/tmp/qumran-{account.pw_uid}", ignore_errors=True)
    subprocess.run(["userdel", "-r", USER], check=False, capture_output=True)


def env_of(account: pwd.struct_passwd, **extra: str) -> dict[str, str]:
    """A session without a runtime folder: no XDG_RUNTIME_DIR, no /run/user/UID."""
    env = {
        "PATH": f"{REPO}/.venv/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": account.pw_dir, "LANG": "C.UTF-8", **extra,
    }  # fmt: skip
    if "PYTHONPATH" in os.environ:  # a development checkout's sources over the .venv's
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    assert not Path(f"/run/user/{account.pw_uid}").exists()
    return env


def run_as(
    account: pwd.struct_passwd, *argv: str, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUNUSER, "-u", account.pw_name, "--", *argv], env=env_of(account, **extra),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def wait_until_up(account: pwd.struct_passwd, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while run_as(account, "qumran", "host").returncode != 0:
        assert daemon.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def test_qumrand_as_a_user_without_a_runtime_folder(
    user: pwd.struct_passwd, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    log = tmp_path / "qumrand.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [RUNUSER, "-u", USER, "--", "qumrand", "--driver", "fake"],
            env=env_of(user), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until_up(user, daemon, log)
        folder = Path(f"/tmp/qumran-{user.pw_uid}")
        st = folder.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == user.pw_uid
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert stat.S_ISSOCK((folder / "qumrand.sock").stat().st_mode)
        assert f"the socket go in {folder}, private to this user" in log.read_text()
        status = run_as(user, "qumran", "daemon", "status")
        assert f"Socket:         {folder}/qumrand.sock\n" in status.stdout, status
        assert f"Run dir:        {folder}\n" in status.stdout
        stop = run_as(user, "qumran", "daemon", "stop")
        assert stop.returncode == 0, stop.stderr
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert "Traceback" not in log.read_text()


def test_a_squatted_tmp_folder_is_refused_by_both(user: pwd.struct_passwd) -> None:
    folder = Path(f"/tmp/qumran-{user.pw_uid}")
    folder.mkdir(mode=0o755)  # made first by someone else (root, here)
    proc = run_as(user, "qumrand", "--driver", "fake")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"qumrand: {folder} belongs to uid 0, not to you (uid {user.pw_uid}): another user "
        "made it first; remove it, or set XDG_RUNTIME_DIR to a folder of yours\n"
    )
    proc = run_as(user, "qumran", "list")
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {folder} is not a private folder of yours (owner uid 0")


def needs_a_set_up_checkout(account: pwd.struct_passwd) -> None:
    if not (REPO / ".venv" / "bin" / "qumrand").exists():
        pytest.skip("the checkout has no .venv: run ./scripts/setup.sh first")
    if run_as(account, "test", "-x", str(REPO / "scripts" / "demo")).returncode != 0:
        pytest.skip(f"{REPO} is not reachable by other users")


def test_the_demo_as_a_new_user(user: pwd.struct_passwd) -> None:
    needs_a_set_up_checkout(user)
    demo = run_as(user, str(REPO / "scripts" / "demo"), timeout=300, QUMRAN_DEMO_DRIVER="fake")
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out
    assert "Traceback" not in out
    folder = f"/tmp/qumran-{user.pw_uid}"
    home = user.pw_dir
    assert f"demo: starting qumrand (log: {home}/.local/state/qumran/qumrand.log)" in out
    assert f"Socket:         {folder}/qumrand.sock\n" in out
    assert "FAKE-VM READY" in out
    assert "demo: the web manager is off; to turn it on, set `enabled = true` under [web]" in out
    assert f"{home}/.config/qumran/qumrand.toml, then `qumran daemon restart`" in out
    assert f"setup: qumran, qumrand and qumran-vmm are in {home}/.local/bin" in out
    assert "setup: systemd is not running here: no units installed" in out
    last = demo.stdout.rstrip().splitlines()[-1].split()  # `qumran list`: Id, Name, State
    assert last[1:] == ["demo", "running"]
    # `qumran: command not found` no more: a login shell of the user's finds the commands.
    login = subprocess.run(
        [RUNUSER, "-l", USER, "-c", "command -v qumran && qumran --help >/dev/null"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == f"{home}/.local/bin/qumran"
    assert os.readlink(f"{home}/.local/bin/qumrand") == f"{REPO}/.venv/bin/qumrand"
    # The web manager is one step away: the settings file setup left says how.
    settings = Path(home, ".config/qumran/qumrand.toml").read_text()
    assert "# enabled = false" in settings
    # A second run finds the daemon and the VM there, and starts nothing new.
    again = run_as(user, str(REPO / "scripts" / "demo"), timeout=300, QUMRAN_DEMO_DRIVER="fake")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "demo: starting qumrand" not in again.stdout
    assert run_as(user, "qumran", "destroy", "demo").returncode == 0
    assert run_as(user, "qumran", "daemon", "stop").returncode == 0


def test_the_demo_shows_the_log_when_qumrand_does_not_come_up(user: pwd.struct_passwd) -> None:
    needs_a_set_up_checkout(user)
    settings = Path(user.pw_dir, ".config", "qumran", "qumrand.toml")
    run_as(user, "mkdir", "-p", str(settings.parent))
    run_as(user, "sh", "-c", f"echo 'log-level = \"loud\"' > {settings}")
    demo = run_as(user, str(REPO / "scripts" / "demo"), timeout=300, QUMRAN_DEMO_DRIVER="fake")
    assert demo.returncode == 1
    assert "Traceback" not in demo.stdout + demo.stderr
    assert "is the daemon running?" not in demo.stderr
    log = f"{user.pw_dir}/.local/state/qumran/qumrand.log"
    assert f"demo: qumrand did not come up; the end of its log ({log}):\n" in demo.stderr
    assert (
        f"    qumrand: {settings}, line 1: log-level: 'loud' is not one of debug, info, "
        "warning, error\n"
    ) in demo.stderr
