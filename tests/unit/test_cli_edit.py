"""`qumran dumpdef` and `qumran edit` (and PUT /v1/vms/{name}/definition) against a real
qumrand with the fake driver; the editor is a script, or a person typing on a pty."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from daemon_harness import Daemon

DEFINITION = "name: {name}\nmemory: 64M\nvcpus: 2\nboot:\n  kernel: /bin/sh\n  cmdline: quiet\n"


def qumran(
    daemon: Daemon, *argv: str, editor: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = dict(daemon.env)
    env.pop("VISUAL", None)
    if editor is not None:
        env["EDITOR"] = editor
    proc = subprocess.run(
        [sys.executable, "-m", "qumran.cli.main", *argv],
        input=stdin, capture_output=True, text=True, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def ok(daemon: Daemon, *argv: str, editor: str | None = None) -> str:
    proc = qumran(daemon, *argv, editor=editor)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def define(daemon: Daemon, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(DEFINITION.format(name=name))
    ok(daemon, "define", str(path))
    return path


def info(daemon: Daemon, name: str) -> dict[str, Any]:
    return daemon.vm(name)


def sed(*expressions: str) -> str:
    """An $EDITOR that changes the file with sed and saves it."""
    return "sed -i " + " ".join(f"-e '{e}'" for e in expressions)


def test_dumpdef_prints_yaml_that_define_takes_back_unchanged(
    fake_daemon: Daemon, tmp_path: Path
) -> None:
    define(fake_daemon, tmp_path, "rt")
    before = info(fake_daemon, "rt")["definition"]
    text = ok(fake_daemon, "dumpdef", "rt")
    assert text.startswith("name: rt\nmemory: 64\nvcpus: 2\n")
    assert json.loads(ok(fake_daemon, "--json", "dumpdef", "rt")) == before
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(text)
    ok(fake_daemon, "undefine", "rt")
    ok(fake_daemon, "define", str(dumped))
    assert info(fake_daemon, "rt")["definition"] == before
    assert ok(fake_daemon, "dumpdef", "rt") == text


def test_defining_a_name_that_exists_points_to_edit(fake_daemon: Daemon, tmp_path: Path) -> None:
    path = define(fake_daemon, tmp_path, "web")
    proc = qumran(fake_daemon, "define", str(path))
    assert proc.returncode == 1
    assert proc.stderr == (
        "error: a VM named 'web' already exists: change it with `qumran edit web` (its "
        "definition: `qumran dumpdef web`), or remove it with `qumran undefine web`\n"
    )


def test_edit_a_shut_off_vm(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "ed")
    out = ok(fake_daemon, "edit", "ed", editor=sed("s/^memory: 64$/memory: 1.5G/"))
    assert out == "VM 'ed' definition updated\n"
    vm = info(fake_daemon, "ed")
    assert (vm["memory_mib"], vm["definition"]["memory"], vm["pending_definition"]) == (
        1536, 1536, None,
    )  # fmt: skip
    last = json.loads(ok(fake_daemon, "--json", "events"))[-1]
    assert (last["event"], last["detail"]) == ("defined", "definition updated")
    assert last["reason"] == "defined" and last["state"] == "shutoff"  # reason kept
    # The temporary file is gone.
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("qumran-ed-*.yaml"))


def test_saving_no_change_changes_nothing(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "same")
    events = len(json.loads(ok(fake_daemon, "--json", "events")))
    assert ok(fake_daemon, "edit", "same", editor="true") == "VM 'same': definition not changed\n"
    assert len(json.loads(ok(fake_daemon, "--json", "events"))) == events


@pytest.mark.parametrize(
    ("editor", "complaint"),
    [
        (sed("s/^memory: 64$/memory: lots/"), "invalid definition: memory: 'lots' is not a size"),
        (sed("s/^name: bad$/name: other/"), "renaming a VM ('bad' to 'other') is not supported"),
        (sed("s/^vcpus: 2$/vcpus: [2/"), "error: "),
        (sed("s/^  kernel: .*/  kernel: missing-kernel/"), "boot.kernel: "),
        ("false", "error: the editor 'false' exited with status 1; nothing changed"),
        ("/no/such/editor", "error: cannot run the editor '/no/such/editor'"),
    ],
)  # fmt: skip
def test_a_bad_edit_from_a_script_is_one_error_and_changes_nothing(
    fake_daemon: Daemon, tmp_path: Path, editor: str, complaint: str
) -> None:
    define(fake_daemon, tmp_path, "bad")
    before = info(fake_daemon, "bad")["definition"]
    proc = qumran(fake_daemon, "edit", "bad", editor=editor)  # stdin: not a terminal
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and complaint in proc.stderr, proc.stderr
    assert info(fake_daemon, "bad")["definition"] == before


def test_relative_paths_typed_in_the_editor_are_the_users(
    fake_daemon: Daemon, tmp_path: Path
) -> None:
    define(fake_daemon, tmp_path, "rel")
    (tmp_path / "vmlinuz").write_bytes(b"\0" * 512)
    env = {**fake_daemon.env, "EDITOR": sed("s/^  kernel: .*/  kernel: vmlinuz/")}
    proc = subprocess.run(
        [sys.executable, "-m", "qumran.cli.main", "edit", "rel"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert info(fake_daemon, "rel")["definition"]["boot"]["kernel"] == str(tmp_path / "vmlinuz")


def test_editing_a_running_vm_applies_at_its_next_start(
    fake_daemon: Daemon, tmp_path: Path
) -> None:
    define(fake_daemon, tmp_path, "live")
    ok(fake_daemon, "start", "live")
    out = ok(fake_daemon, "edit", "live", editor=sed("s/^memory: 64$/memory: 128/"))
    assert out == (
        "VM 'live' definition updated (it is running: the change applies from its next start)\n"
    )
    vm = info(fake_daemon, "live")
    assert (vm["memory_mib"], vm["pending_definition"]["memory"]) == (64, 128)
    assert (vm["state"], vm["reason"]) == ("running", "booted")
    assert "memory: 64\n" in ok(fake_daemon, "dumpdef", "live")
    assert "memory: 128\n" in ok(fake_daemon, "dumpdef", "live", "--inactive")
    # A second edit starts from the pending definition, and replaces it.
    ok(fake_daemon, "edit", "live", editor=sed("s/^vcpus: 2$/vcpus: 3/"))
    pending = info(fake_daemon, "live")["pending_definition"]
    assert (pending["memory"], pending["vcpus"]) == (128, 3)
    # A restarted daemon keeps it; the stop applies it.
    fake_daemon.restart()
    assert info(fake_daemon, "live")["pending_definition"] == pending
    ok(fake_daemon, "destroy", "live")
    vm = fake_daemon.wait_state("live", "shutoff")
    assert (vm["definition"], vm["pending_definition"], vm["memory_mib"]) == (pending, None, 128)
    ok(fake_daemon, "start", "live")
    assert info(fake_daemon, "live")["vcpus"] == 3


def test_a_pending_definition_is_applied_when_the_vm_stopped_while_the_daemon_was_away(
    fake_daemon: Daemon, tmp_path: Path
) -> None:
    import signal

    define(fake_daemon, tmp_path, "away")
    ok(fake_daemon, "start", "away")
    pid = info(fake_daemon, "away")["pid"]
    ok(fake_daemon, "edit", "away", editor=sed("s/^memory: 64$/memory: 96/"))
    fake_daemon.stop()
    os.kill(pid, signal.SIGKILL)
    fake_daemon.start()
    vm = fake_daemon.wait_state("away", "shutoff")
    assert (vm["memory_mib"], vm["pending_definition"]) == (96, None)


def test_the_definition_route(fake_daemon: Daemon, tmp_path: Path) -> None:
    define(fake_daemon, tmp_path, "api")
    doc = {"name": "api", "memory": "256M", "boot": {"kernel": "/bin/sh"}}
    answer = fake_daemon.call("PUT", "/v1/vms/api/definition", json=doc)
    assert answer.status_code == 200 and answer.json()["memory_mib"] == 256
    missing = fake_daemon.call("PUT", "/v1/vms/nope/definition", json={**doc, "name": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not-found"
    broken = fake_daemon.call("PUT", "/v1/vms/api/definition", content=b"{")
    assert broken.status_code == 400
    assert broken.json()["error"]["message"].startswith("the body is not a JSON document")
    huge = {**doc, "memory": "8T"}
    refused = fake_daemon.call("PUT", "/v1/vms/api/definition", json=huge)
    assert refused.status_code == 400 and "--force" in refused.json()["error"]["message"]
    forced = fake_daemon.call("PUT", "/v1/vms/api/definition?force=true", json=huge)
    assert forced.status_code == 200 and forced.json()["memory_mib"] == 8 << 20


def test_a_person_at_a_terminal_may_edit_again(fake_daemon: Daemon, tmp_path: Path) -> None:
    """An invalid save asks "Edit again?"; yes reopens the editor on what was saved."""
    define(fake_daemon, tmp_path, "tty")
    # First save: an invalid memory; second (on the file as left): a valid one.
    editor = tmp_path / "editor.sh"
    editor.write_text(
        "#!/bin/sh\n"
        'if grep -q "memory: lots" "$1"; then sed -i "s/memory: lots/memory: 80/" "$1";\n'
        'else sed -i "s/^memory: 64$/memory: lots/" "$1"; fi\n'
    )
    editor.chmod(0o755)
    out = run_on_terminal(fake_daemon, ["edit", "tty"], str(editor), answers={"[y/n]": "y\n"})
    assert "memory: 'lots' is not a size" in out and "Edit again? [y/n]" in out
    assert "VM 'tty' definition updated" in out
    assert info(fake_daemon, "tty")["memory_mib"] == 80
    # No: the edit is abandoned, exit status 1.
    editor.write_text('#!/bin/sh\nsed -i "s/^vcpus: 2$/vcpus: many/" "$1"\n')
    out = run_on_terminal(
        fake_daemon, ["edit", "tty"], str(editor), answers={"[y/n]": "n\n"}, status=1
    )
    assert "edit abandoned; its definition is unchanged" in out
    assert info(fake_daemon, "tty")["vcpus"] == 2


def run_on_terminal(
    daemon: Daemon, argv: list[str], editor: str, answers: dict[str, str], status: int = 0
) -> str:
    """Run qumran with a pty as its terminal, answering each prompt once; its output."""
    master, slave = pty.openpty()
    env = {**daemon.env, "EDITOR": editor}
    env.pop("VISUAL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "qumran.cli.main", *argv],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    seen = b""
    pending = dict(answers)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the process closed its terminal
                    break
                if not chunk:
                    break
                seen += chunk
                for prompt, answer in list(pending.items()):
                    if prompt.encode() in seen:
                        os.write(master, answer.encode())
                        del pending[prompt]
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=10) == status, seen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in seen.decode(errors="replace")
    return seen.decode(errors="replace").replace("\r\n", "\n")


def test_a_json_definition_file_is_accepted(fake_daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    path.write_text(json.dumps({"name": "j", "memory": "64M", "boot": {"kernel": "/bin/sh"}}))
    assert ok(fake_daemon, "define", str(path)) == f"VM 'j' defined from {path}\n"
    assert info(fake_daemon, "j")["memory_mib"] == 64
