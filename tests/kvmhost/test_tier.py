"""The kvm tier's queue, lanes' output and summary, and the runner's idle limit (no test
host booted: the real tier runs from scripts/test)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from . import tier
from .lane import Queue, run_file
from .runner import BOOT_FAILED_STATUS, TIMEOUT_STATUS, Job, _collect
from .tier import Printer, by_cost, summary


def test_two_lanes_take_every_file_once(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    paths = [f"tests/kvm/test_{n}.py" for n in range(40)]
    queue.create(paths)
    taken: dict[str, list[str]] = {"k1": [], "k2": []}

    def lane(name: str) -> None:
        while (entry := queue.take(name)) is not None:
            taken[name].append(entry.path)
            queue.finish(name, entry, 0, 0.1)

    threads = [threading.Thread(target=lane, args=(name,)) for name in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken["k1"] + taken["k2"]) == sorted(paths)
    assert sorted(r.path for r in queue.results()) == sorted(paths)
    assert queue.pending() == []


def test_a_file_put_back_is_taken_again_in_its_place(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    queue.create(["a.py", "b.py"])
    first = queue.take("k1")
    assert first is not None and first.path == "a.py"
    assert queue.taken("k1") == [first]
    queue.put_back("k1", first)  # its test host died
    assert queue.taken("k1") == []
    again = queue.take("k2")
    assert again == first
    queue.finish("k2", again, 1, 12.5)
    [result] = queue.results()
    assert (result.path, result.status, result.seconds, result.lane) == ("a.py", 1, 12.5, "k2")


def test_a_path_with_spaces_survives_the_result_file(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    queue.create(["tests/kvm/my file.py"])
    entry = queue.take("k1")
    assert entry is not None
    queue.finish("k1", entry, 0, 1.0)
    assert queue.results()[0].path == "tests/kvm/my file.py"


def test_longest_first_and_unknown_files_early() -> None:
    files = ["tests/kvm/test_vmm_bad_input.py", "tests/kvm/test_new.py",
             "tests/kvm/test_virtio_guest.py", "tests/kvm/test_vmm_tiny.py"]  # fmt: skip
    order = ["test_new.py", "test_virtio_guest.py", "test_vmm_tiny.py", "test_vmm_bad_input.py"]
    assert [Path(f).name for f in by_cost(files)] == order


def test_lines_of_two_lanes_never_mix() -> None:
    out: list[bytes] = []
    printer = Printer(out.append)
    printer.feed("k1", b"one ha")
    printer.feed("k2", b"two\nthr")
    printer.feed("k1", b"lf\r\n")
    printer.say("k2", "note\n")  # ends k2's unfinished line first
    assert out == [b"[k2] two\n", b"[k1] one half\n", b"[k2] thr\n", b"[k2] note\n"]


def test_summary_fails_for_a_failed_or_missing_file(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q")
    queue.create(["a.py", "b.py", "c.py"])
    for status in (0, 3):
        entry = queue.take("k1")
        assert entry is not None
        queue.finish("k1", entry, status, 5.0)
    text, status = summary(queue.results(), ["a.py", "b.py"], 60.0)
    assert status == 3 and "FAILED (3)" in text
    text, status = summary(queue.results()[:1], ["a.py"], 60.0)
    assert status == 0 and "passed" in text
    text, status = summary(queue.results(), ["a.py", "b.py", "c.py"], 60.0)
    assert status == 3 and "c.py" in text and "not run" in text


def test_a_silent_file_is_said_to_be_running(capfd: pytest.CaptureFixture[str]) -> None:
    code = "import time; print('file.py ', end='', flush=True); time.sleep(1); print('.')"
    status = run_file([sys.executable, "-c", code, "file.py"], heartbeat=0.4)
    assert status == 0
    out = capfd.readouterr().out
    # The note is a line of its own, even in the middle of pytest's line of dots.
    assert "file.py \nkvm tier: file.py still running (" in out, out
    assert out.endswith(" s)\n.\n"), out


def test_run_file_gives_the_status(capfd: pytest.CaptureFixture[str]) -> None:
    assert run_file([sys.executable, "-c", "raise SystemExit(4)"], heartbeat=5) == 4


@pytest.mark.parametrize("talks", [True, False])
def test_the_idle_limit_counts_from_the_last_output(talks: bool) -> None:
    """A job that keeps talking outlives the idle limit; a silent one is cut at it."""
    nonce = "abc"
    body = "for i in 1 2 3 4 5 6; do echo tick; sleep 0.2; done" if talks else "sleep 5"
    script = f"echo KVMHOST-START-{nonce}; {body}; echo KVMHOST-EXIT-{nonce} 0"
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE)
    job = Job(argv=[], cwd=Path("/"), env={}, timeout=30, idle_timeout=0.6)
    started = time.monotonic()
    try:
        status, output = _collect(proc, nonce, job)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    if talks:
        assert status == 0 and output.count(b"tick") == 6
    else:
        assert status == TIMEOUT_STATUS and b"no output for" in output
        assert time.monotonic() - started < 4


def test_a_lane_whose_test_hosts_never_start_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test host that dies before taking a file (a broken image, no memory) is tried
    ``attempts`` times, then the lane stops and its files are reported not run."""
    boots: list[int] = []

    def dead_host(cmd: list[str], **kwargs: object) -> tuple[int, str]:
        boots.append(1)
        return BOOT_FAILED_STATUS, "kvmhost: guest stopped without a status"

    monkeypatch.setattr(tier, "run_in_kvmhost", dead_host)
    args = argparse.Namespace(artifacts=str(tmp_path), lanes=1, cpus=1, memory=512,
                              timeout=60.0, idle=30.0, attempts=3, env=[])  # fmt: skip
    results = tier.Tier(args, ["pytest"]).run(["a.py", "b.py"])
    assert len(boots) == 3 and results == []
    text, status = summary(results, ["a.py", "b.py"], 1.0)
    assert status == 1 and text.count("not run") == 2
