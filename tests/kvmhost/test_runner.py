"""The runner's host-side logic: console splitting and the job script (no guest booted)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .runner import ConsoleStream, Job, job_env, job_script

NONCE = "0123456789ab"
START = f"KVMHOST-START-{NONCE}\n".encode()
EXIT = f"KVMHOST-EXIT-{NONCE} ".encode()


def feed_all(chunks: list[bytes]) -> tuple[ConsoleStream, list[bytes]]:
    seen: list[bytes] = []
    stream = ConsoleStream(NONCE, seen.append)
    for chunk in chunks:
        stream.feed(chunk)
    return stream, seen


def console(output: bytes, status: int) -> bytes:
    return b"boot noise\r\n" + START + output + EXIT + b"%d\n" % status + b"[ 3.1] reboot\n"


@pytest.mark.parametrize("output", [b"", b"line\n", b"no newline", b"KVMHOST-EX", b"a\nb\n" * 50])
def test_any_split_of_the_console_gives_the_same_result(output: bytes) -> None:
    raw = console(output, 42)
    for cut in range(len(raw) + 1):
        stream, seen = feed_all([raw[:cut], raw[cut:]])
        assert (stream.status, bytes(stream.output)) == (42, output), cut
        assert b"".join(seen) == output


def test_byte_by_byte_streaming() -> None:
    raw = console(b"hello\nworld\n", 3)
    stream, seen = feed_all([raw[i : i + 1] for i in range(len(raw))])
    assert stream.status == 3
    assert b"".join(seen) == b"hello\nworld\n"


def test_markers_of_another_run_are_plain_output() -> None:
    output = b"KVMHOST-START-ffffffffffff\nKVMHOST-EXIT-ffffffffffff 9\n"
    stream, _ = feed_all([console(output, 0)])
    assert stream.status == 0 and bytes(stream.output) == output


def test_no_status_until_the_marker_line_is_complete() -> None:
    stream, _ = feed_all([START, b"out", EXIT + b"1"])
    assert stream.status is None
    stream.feed(b"7\n")
    assert stream.status == 17


def test_flush_gives_back_a_held_partial_marker() -> None:
    stream, seen = feed_all([START, b"tail KVMHOST-EX"])
    assert b"".join(seen) == b"tail "
    stream.flush()
    assert b"".join(seen) == b"tail KVMHOST-EX" and stream.status is None


def test_boot_noise_is_kept_apart() -> None:
    stream, seen = feed_all([b"insmod: cannot load x\n"])
    assert not seen and "cannot load x" in stream.preamble()


def test_job_script_runs_the_command_verbatim(tmp_path: Path) -> None:
    odd = tmp_path / "dir with 'quotes' and $dollar"
    odd.mkdir()
    job = Job(
        argv=["sh", "-c", 'printf "%s|" "$PWD" "$1" "$QUMRAN_X" "$HOME"', "-", "a b\"c'd"],
        cwd=odd,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "QUMRAN_X": "$(not run)"},
    )
    script = tmp_path / "job.sh"
    script.write_text(job_script(job))
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True)
    assert out.stdout == f"{odd}|a b\"c'd|$(not run)|/tmp|"


def test_job_script_reports_a_missing_cwd(tmp_path: Path) -> None:
    job = Job(argv=["true"], cwd=tmp_path / "missing", env={})
    script = tmp_path / "job.sh"
    script.write_text(job_script(job))
    assert subprocess.run(["sh", str(script)], capture_output=True).returncode == 125


def test_environment_passthrough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUMRAN_KVM_TEST", "1")
    monkeypatch.setenv("SECRET_TOKEN", "x")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    env = job_env({"EXTRA": "y"})
    assert env["HOME"] == "/tmp" and env["QUMRAN_KVM_TEST"] == "1" and env["EXTRA"] == "y"
    assert "SECRET_TOKEN" not in env and "PATH" in env
    assert env["XDG_CACHE_HOME"] == str(Path.home() / ".cache")
