"""qumran-vmm's command line and host checks, without running a guest."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from qumran.vmm import cmdline
from qumran.vmm import main as vmm_main
from qumran.vmm.builder import check_host
from qumran.vmm.console import StdioConsole, open_console
from qumran.vmm.errors import NoHardwareVirt
from qumran.vmm.sockets import SocketInUse, bind_unix_socket


@pytest.mark.parametrize(
    ("text", "size"),
    [("256M", 256 << 20), ("1G", 1 << 30), ("512", 512 << 20), ("64MiB", 64 << 20),
     ("2048k", 2 << 20)],
)  # fmt: skip
def test_memory_sizes(text: str, size: int) -> None:
    assert cmdline.parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "12X", "-1M", "1.5G"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(cmdline.UsageError):
        cmdline.parse_memory(text)


def test_command_line_forms_and_defaults() -> None:
    argv = ["--name", "web", "--kernel=/k", "--memory=1G", "--vcpus", "2",
            "--disk", "a.img", "--disk=b.img,ro", "--rng", "--cmdline", "--x=y"]  # fmt: skip
    a = cmdline.parse(argv)
    assert (a.name, a.kernel, a.memory, a.vcpus) == ("web", "/k", 1 << 30, 2)
    assert a.disk == ["a.img", "b.img,ro"] and a.rng and not a.force_kvm
    assert a.cmdline == "--x=y"  # a value is taken as is, even when it looks like a flag
    assert (a.initrd, a.control, a.console, a.kvm_device) == (None, None, "stdio", "/dev/kvm")
    assert cmdline.parse(["--name", "n", "--kernel", "k"]).cmdline == cmdline.DEFAULT_CMDLINE


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "x"], "required: --kernel"),
        (["--name", "x", "--kernel", "k", "--bogus"], "unrecognized argument '--bogus'"),
        (["--name", "x", "--kernel"], r"--kernel needs a value \(PATH\)"),
        (["--name", "x", "--name", "y", "--kernel", "k"], "--name given twice"),
        (["--name", "x", "--kernel", "k", "--rng=yes"], "--rng takes no value"),
        (["--name", "x", "--kernel", "k", "--vcpus", "two"], "--vcpus: invalid vCPU count"),
    ],
)
def test_command_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(cmdline.UsageError, match=message):
        cmdline.parse(argv)


def test_usage_errors_exit_2_and_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        vmm_main.main(["--name", "x", "--memory", "lots", "--kernel", "k"])
    assert exc.value.code == 2
    assert "qumran-vmm: error: --memory: invalid memory size 'lots'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        vmm_main.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--virtio-console socket:PATH" in out and "--kvm-device" not in out


def test_host_without_vmx_or_svm_is_refused(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu vme sse sse2 hypervisor\n")
    with pytest.raises(NoHardwareVirt, match="--force-kvm"):
        check_host(False, str(cpuinfo))
    check_host(True, str(cpuinfo))  # the override
    cpuinfo.write_text("flags\t\t: fpu svm sse\n")
    check_host(False, str(cpuinfo))


def _run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = vmm_main.main(list(argv))
    return status, capsys.readouterr().err


def test_bad_kernel_is_one_line_and_leaves_no_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x7fELF" + bytes(4096))
    control = tmp_path / "c.sock"
    console = f"socket:{tmp_path}/k.sock"
    status, err = _run_main(
        capsys,
        "--name",
        "x",
        "--kernel",
        str(kernel),
        "--control",
        str(control),
        "--console",
        console,
    )
    assert status == 1
    assert err == f"qumran-vmm: error: {kernel}: not a bzImage (no Linux setup header)\n"
    assert list(tmp_path.glob("*.sock")) == []


def test_missing_kernel_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _run_main(capsys, "--name", "x", "--kernel", str(tmp_path / "nope"))
    assert status == 1 and "cannot read kernel" in err and err.count("\n") == 1


def test_a_console_log_that_cannot_be_opened_is_one_line_and_leaves_no_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "no-such-dir" / "console.log"
    console = f"socket:{tmp_path}/k.sock"
    argv = ["--name", "x", "--kernel", str(tmp_path / "k"), "--console", console]
    status, err = _run_main(capsys, *argv, "--console-log", str(log))
    assert status == 1
    assert (
        err == f"qumran-vmm: error: cannot open the console log {log}: No such file or directory\n"
    )
    assert list(tmp_path.glob("*.sock")) == []


def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    first = bind_unix_socket(path)
    with pytest.raises(SocketInUse, match="in use"):
        bind_unix_socket(path)
    first.close()  # the owner is gone, the file stays: stale
    assert os.path.exists(path)
    second = bind_unix_socket(path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.close()
    second.close()
    regular = tmp_path / "file"
    regular.write_text("")
    with pytest.raises(SocketInUse, match="not a socket"):
        bind_unix_socket(str(regular))


def test_console_escape_on_a_terminal() -> None:
    console = StdioConsole()
    quits: list[bool] = []
    console.on_quit = lambda: quits.append(True)
    assert console._filter(b"ab\x01\x01c") == b"ab\x01c"
    assert console._filter(b"d\x01") == b"d" and not quits
    assert console._filter(b"xignored") == b"" and quits == [True]


def test_console_specs() -> None:
    assert isinstance(open_console("stdio"), StdioConsole)
    with pytest.raises(ValueError, match="socket:PATH"):
        open_console("socket:")
    with pytest.raises(ValueError, match="stdio"):
        open_console("tcp:1234")


def test_a_socket_in_use_leaves_the_other_sockets_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = bind_unix_socket(str(tmp_path / "busy.sock"))  # another VM's live socket
    try:
        status, err = _run_main(
            capsys, "--name", "x", "--kernel", str(tmp_path / "k"),
            "--console", f"socket:{tmp_path}/con.sock",
            "--virtio-console", f"socket:{tmp_path}/busy.sock",
        )  # fmt: skip
    finally:
        busy.close()
    assert status == 1 and "in use" in err
    assert sorted(p.name for p in tmp_path.glob("*.sock")) == ["busy.sock"]
