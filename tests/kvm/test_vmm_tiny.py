"""The VMM's lifecycle against tiny hand-made bzImages (a few instructions, no Linux):
power-off, reset, triple fault, pause/resume. Fast; they need a /dev/kvm but not a CPU
with vmx/svm (``--force-kvm``), so they also run on a host with a software KVM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tinykernel
from vmm_harness import Vmm

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.tiny,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no /dev/kvm"),
]
MakeVmm = Callable[..., Vmm]


def _kernel(workdir: Path, name: str, data: bytes) -> Path:
    path = workdir / f"{name}.bzImage"
    path.write_bytes(data)
    return path


def _tiny(vmm_factory: MakeVmm, workdir: Path, name: str, data: bytes) -> Vmm:
    kernel = _kernel(workdir, name, data)
    return vmm_factory(kernel, memory="64M", extra=["--force-kvm"]).start()


def test_guest_poweroff_exits_zero(vmm_factory: MakeVmm, workdir: Path) -> None:
    vmm = _tiny(vmm_factory, workdir, "hello", tinykernel.hello_then_poweroff())
    assert vmm.wait(60) == 0
    assert "TINY-HELLO" in vmm.console.text


def test_console_log_keeps_every_boot_of_the_guest(vmm_factory: MakeVmm, workdir: Path) -> None:
    kernel = _kernel(workdir, "hello", tinykernel.hello_then_poweroff())
    log = workdir / "console.log"
    for _ in range(2):  # appended to, as qumrand keeps one log across a VM's runs
        vmm = vmm_factory(kernel, memory="64M", extra=["--force-kvm", "--console-log", str(log)])
        assert vmm.start().wait(60) == 0
    assert log.read_text().count("TINY-HELLO") == 2
    assert log.stat().st_mode & 0o777 == 0o600


def test_triple_fault_is_a_crash(vmm_factory: MakeVmm, workdir: Path) -> None:
    vmm = _tiny(vmm_factory, workdir, "crash", tinykernel.triple_fault())
    assert vmm.wait(60) == 2
    assert "TINY-CRASH" in vmm.console.text
    assert "guest crashed: triple fault on vCPU 0" in vmm.stderr
    # The dump for the log: registers, special registers and the exits that led there
    # (the ud2 -> #UD -> #DF -> shutdown after the serial port writes).
    err = vmm.stderr
    assert "crash: vCPU 0" in err and "crash:   rax=" in err and " rip=" in err, err
    assert "crash:   cs  sel=" in err and "crash:   cr0=" in err and "idt=" in err, err
    assert "last exits (oldest first): IoOut(port=0x3f8, size=0x1) x11, TripleFault" in err, err
    # KVM on AMD resets a vCPU that shut down before returning: the dump must say so.
    amd = "AuthenticAMD" in Path("/proc/cpuinfo").read_text()
    assert ("the reset state, not the fault's" in err) == amd, err


def test_ps_shows_the_vms_name_and_the_limits_hold(vmm_factory: MakeVmm, workdir: Path) -> None:
    kernel = _kernel(workdir, "named", tinykernel.reset_on_key())
    vmm = vmm_factory(kernel, memory="64M", name="web-frontend-7", extra=["--force-kvm"])
    vmm.start().console.wait_for("TINY-BOOT", 60)
    ps = subprocess.run(["ps", "-o", "comm=,args=", "-p", str(vmm.pid)],
                        capture_output=True, text=True, check=True)  # fmt: skip
    comm, args = ps.stdout.split(None, 1)
    assert comm == "web-frontend-7", ps.stdout
    assert args.startswith("qumran-vmm --name web-frontend-7 "), ps.stdout  # not python3's
    assert Path(f"/proc/{vmm.pid}/cmdline").read_bytes().split(b"\0")[:3] == [
        b"qumran-vmm",
        b"--name",
        b"web-frontend-7",
    ]
    limits = Path(f"/proc/{vmm.pid}/limits").read_text()
    assert re.search(r"Max open files +4096 +4096 ", limits), limits
    assert re.search(r"Max core file size +0 +0 ", limits), limits
    threads = os.listdir(f"/proc/{vmm.pid}/task")
    names = {Path(f"/proc/{vmm.pid}/task/{t}/comm").read_text().strip() for t in threads}
    assert "CPU 0/KVM" in names, names


def test_reset_reboots_in_the_same_process(vmm_factory: MakeVmm, workdir: Path) -> None:
    vmm = _tiny(vmm_factory, workdir, "reset", tinykernel.reset_on_key())
    pid = vmm.pid
    vmm.console.wait_for("TINY-BOOT", 60)
    for boots in (2, 3):
        since = vmm.console.mark()
        vmm.type("x")  # the guest resets through the ACPI reset register
        vmm.console.wait_for("TINY-BOOT", 60, since)
        assert vmm.control("status")["reboots"] == boots - 1
    assert vmm.pid == pid
    assert vmm.control("quit") == {"ok": True}
    assert vmm.wait(30) == 0


def test_reset_from_the_control_socket_boots_again_and_keeps_a_pause(
    vmm_factory: MakeVmm, workdir: Path
) -> None:
    vmm = _tiny(vmm_factory, workdir, "reset", tinykernel.reset_on_key())
    vmm.console.wait_for("TINY-BOOT", 60)
    since = vmm.console.mark()
    assert vmm.control("reset") == {"ok": True, "state": "running", "reboots": 1}
    vmm.console.wait_for("TINY-BOOT", 60, since)
    assert vmm.control("pause")["state"] == "paused"
    since = vmm.console.mark()
    assert vmm.control("reset") == {"ok": True, "state": "paused", "reboots": 2}
    time.sleep(1.0)
    assert "TINY-BOOT" not in vmm.console.text[since:]  # held before its first instruction
    assert vmm.control("resume")["state"] == "running"
    vmm.console.wait_for("TINY-BOOT", 60, since)
    assert vmm.control("quit") == {"ok": True}
    assert vmm.wait(30) == 0


def test_pause_holds_the_vcpus_and_resume_releases_them(
    vmm_factory: MakeVmm, workdir: Path
) -> None:
    vmm = _tiny(vmm_factory, workdir, "spin", tinykernel.spin())
    vmm.console.wait_for("TINY-SPIN", 60)
    names = {(p / "comm").read_text().strip() for p in Path(f"/proc/{vmm.pid}/task").iterdir()}
    assert {"testvm", "CPU 0/KVM"} <= names  # process and vCPU thread names, as top shows
    assert vmm.control("pause") == {"ok": True, "state": "paused"}
    paused = vmm.control("stats")
    assert [v["state"] for v in paused["vcpus"]] == ["paused"]
    cpu_before = paused["vcpus"][0]["cpu_time"]
    time.sleep(1.0)
    still = vmm.control("stats")
    assert still["vcpus"][0]["cpu_time"] - cpu_before < 0.2  # held, not spinning
    assert vmm.control("status")["state"] == "paused"
    assert vmm.control("resume") == {"ok": True, "state": "running"}
    time.sleep(1.0)
    running = vmm.control("stats")
    assert running["vcpus"][0]["cpu_time"] > still["vcpus"][0]["cpu_time"]
    assert running["exits"].get("io", 0) >= len("TINY-SPIN\n")
    vmm.signal(signal.SIGTERM)
    assert vmm.wait(30) == 0
    assert not vmm.control_path.exists()


def test_sigstop_and_sigcont_act_on_the_whole_vm(vmm_factory: MakeVmm, workdir: Path) -> None:
    vmm = _tiny(vmm_factory, workdir, "spin", tinykernel.spin())
    vmm.console.wait_for("TINY-SPIN", 60)
    vmm.signal(signal.SIGSTOP)
    time.sleep(0.3)
    assert _proc_state(vmm.pid) == "T"
    stopped = _vcpu_ticks(vmm.pid)
    time.sleep(1.0)
    assert _vcpu_ticks(vmm.pid) == stopped  # the spinning vCPU is frozen too
    vmm.signal(signal.SIGCONT)
    time.sleep(1.0)
    assert _vcpu_ticks(vmm.pid) > stopped  # and spins again, nobody resumed it by hand
    assert vmm.control("status")["state"] == "running"
    vmm.control("quit")
    assert vmm.wait(30) == 0


def _vcpu_ticks(pid: int) -> int:
    """utime + stime of the "CPU 0/KVM" thread."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == "CPU 0/KVM":
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
    raise AssertionError("no vCPU thread")


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_control_socket_rejects_bad_requests(vmm_factory: MakeVmm, workdir: Path) -> None:
    vmm = _tiny(vmm_factory, workdir, "spin", tinykernel.spin())
    reply = vmm.control("launch-missiles", id=7)
    assert reply["ok"] is False and reply["id"] == 7
    assert reply["error"]["code"] == "unknown-command"
    vmm.control("quit")
    assert vmm.wait(30) == 0


def test_terminal_console_is_raw_and_ctrl_a_x_quits(workdir: Path) -> None:
    """On a tty, stdio goes raw (keys reach the guest as typed) and is restored at exit."""
    import subprocess
    import termios

    from vmm_harness import QUMRAN_VMM

    kernel = _kernel(workdir, "spin", tinykernel.spin())
    leader, follower = os.openpty()
    before = termios.tcgetattr(follower)
    proc = subprocess.Popen(
        [QUMRAN_VMM, "--name", "tty", "--kernel", str(kernel), "--memory", "64M", "--force-kvm"],
        stdin=follower, stdout=follower, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        seen = b""
        while b"TINY-SPIN" not in seen:
            seen += os.read(leader, 1024)
        raw = termios.tcgetattr(follower)
        assert not raw[3] & termios.ICANON and not raw[3] & termios.ECHO
        os.write(leader, b"\x01x")  # Ctrl-A x
        assert proc.wait(30) == 0
        assert termios.tcgetattr(follower) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
        os.close(follower)


def _status_field(path: str, field: str) -> str:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def test_vcpu_and_device_threads_run_under_seccomp_with_no_new_privs(
    vmm_factory: MakeVmm, workdir: Path
) -> None:
    kernel = _kernel(workdir, "confined", tinykernel.reset_on_key())
    vmm = vmm_factory(kernel, memory="64M", extra=["--force-kvm", "--rng"])
    vmm.start().console.wait_for("TINY-BOOT", 60)
    task = Path(f"/proc/{vmm.pid}/task")
    modes = {(task / t / "comm").read_text().strip(): _status_field(str(task / t / "status"),
             "Seccomp") for t in os.listdir(task)}  # fmt: skip
    assert modes["CPU 0/KVM"] == "2" and modes["virtio-io"] == "2", modes  # 2: filter mode
    assert _status_field(f"/proc/{vmm.pid}/status", "NoNewPrivs") == "1"
    limits = Path(f"/proc/{vmm.pid}/limits").read_text()
    assert any(line.startswith("Max core file size") and line.split()[4:6] == ["0", "0"]
               for line in limits.splitlines()), limits  # fmt: skip
    vmm.control("quit")
    assert vmm.wait(30) == 0  # the filters let the threads stop and the process exit


@pytest.mark.parametrize(("role", "thread", "call"), [
    ("vcpu", "vcpu", "ptrace (101)"),
    ("io", "io", "ptrace (101)"),
    ("io:ioctl", "io", "ioctl (16)"),  # the I/O thread's ioctls: KVM_IRQ_LINE only
])  # fmt: skip
def test_a_forbidden_system_call_stops_the_vmm_and_is_named(
    vmm_factory: MakeVmm, workdir: Path, monkeypatch: pytest.MonkeyPatch, role: str, thread: str,
    call: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("QUMRAN_VMM_SECCOMP_PROBE", role)  # test-only: a forbidden call there
    kernel = _kernel(workdir, "probe", tinykernel.reset_on_key())
    vmm = vmm_factory(kernel, memory="64M", name="probed", extra=["--force-kvm", "--rng"])
    assert vmm.start().wait(60) == 1
    assert (f"qumran-vmm: probed: forbidden system call {call} in the {thread} thread"
            in vmm.stderr), vmm.stderr  # fmt: skip
    # Ended on the spot, as by SIGKILL: nothing removed its control socket.
    (workdir / "control.sock").unlink()
