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


def _fake_tracefs(root: Path) -> Path:
    (root / "events/kvm/kvm_exit").mkdir(parents=True)
    for name in ("trace", "tracing_on", "buffer_size_kb", "events/kvm/enable"):
        (root / name).write_text("")
    return root


@pytest.mark.parametrize("shut_down", [True, False])
def test_kvm_trace_is_kept_only_after_a_nested_shutdown(tmp_path: Path, shut_down: bool) -> None:
    """The job script arms the trace, keeps the command's status, and saves the trace only
    when the shutdown trigger stopped it (here the command plays the trigger's part)."""
    fs = _fake_tracefs(tmp_path / "tracefs")
    out = tmp_path / "kept" / "trace.txt"
    out.parent.mkdir()
    stop = f"echo 0 > {fs}/tracing_on; " if shut_down else ""
    command = f"{stop}for i in 1 2 3; do echo event$i >> {fs}/trace; done; exit 3"
    job = Job(argv=["sh", "-c", command], cwd=tmp_path, env={"KVMHOST_TRACEFS": str(fs)},
              kvm_trace=out)  # fmt: skip
    script = tmp_path / "job.sh"
    script.write_text(job_script(job))
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert (fs / "events/kvm/kvm_exit/trigger").read_text() == "traceoff if exit_reason==127\n"
    assert (fs / "events/kvm/enable").read_text() == "1\n"
    if shut_down:
        assert out.read_text().splitlines()[-3:] == ["event1", "event2", "event3"]
        assert f"kvm trace up to it: {out}" in done.stderr
    else:
        assert not out.exists() and done.stderr == ""
        assert (fs / "tracing_on").read_text() == "0\n"  # tracing is not left running
