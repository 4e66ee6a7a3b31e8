"""The `qumran` command against a stub qumrand (stdlib http.server on a UNIX socket).

In-process runs (``main(argv)``) check output and exit codes; subprocess runs check what
only a real process shows: the modules imported by `qumran list`, Ctrl-C, the entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from qumran.cli.main import main


def vm(name: str, state: str = "shutoff", pid: int | None = None, **extra: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": name, "uuid": f"uuid-{name}", "owner": 0, "state": state,
        "reason": "user" if state == "shutoff" else "booted", "hypervisor": "qemu",
        "pid": pid, "vcpus": 2, "memory_mib": 512, "autostart": False,
        "cpu_time": None if pid is None else 1.25, "rss_bytes": None, "started_at": None,
        "definition": {"name": name},
    }  # fmt: skip
    info.update(extra)
    return info


class StubDaemon:
    """Answers the API from an in-memory table, and records each request."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.vms: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.handle(self, "GET")

            def do_POST(self) -> None:
                stub.handle(self, "POST")

            def do_PUT(self) -> None:
                stub.handle(self, "PUT")

            def do_DELETE(self) -> None:
                stub.handle(self, "DELETE")

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(path, Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = json.loads(req.rfile.read(length)) if length else None
        url = urlsplit(req.path)
        self.requests.append((method, req.path, body))
        status, doc = self.route(method, [unquote(p) for p in url.path.split("/")[2:]],
                                 parse_qs(url.query), body)  # fmt: skip
        data = b"" if doc is None else json.dumps(doc).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def route(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        match method, parts:
            case "GET", ["host"]:
                return 200, {"hostname": "h1", "uid": 0, "version": "0.1.0", "drivers": [
                    {"driver": "qemu", "accelerator": "tcg", "reason": QEMU_REASON,
                     "version": "7.2", "available": True},
                    {"driver": "native", "accelerator": "kvm", "reason": NATIVE_REASON,
                     "version": "qumran-vmm", "available": False}]}  # fmt: skip
            case "GET", ["vms"]:
                everything = query.get("all") == ["true"]
                return 200, [v for v in self.vms.values() if everything or v["pid"]]
            case "POST", ["vms"]:
                self.vms[body["name"]] = vm(body["name"], definition=body)
                return 201, self.vms[body["name"]]
            case "GET", ["events"]:
                since = int(query.get("since", ["0"])[0])
                return 200, [e for e in self.events if e["id"] > since]
        if len(parts) < 2 or parts[0] != "vms":
            return 404, {"detail": "Not Found"}
        name = parts[1]
        if name not in self.vms:
            return 404, {"error": {"code": "not-found", "message": f"no VM named {name!r}"}}
        match method, parts[2:]:
            case "GET", []:
                return 200, self.vms[name]
            case "DELETE", []:
                del self.vms[name]
                return 204, None
            case "PUT", ["autostart"]:
                self.vms[name]["autostart"] = body["enabled"]
                return 200, self.vms[name]
            case "POST", ["start"]:
                if self.vms[name]["pid"]:
                    return 409, {"error": {"code": "invalid-state", "message": "already running"}}
                self.vms[name].update(state="running", reason="booted", pid=4242)
                return 200, self.vms[name]
            case "POST", [_]:
                return 200, self.vms[name]
        return 404, {"detail": "Not Found"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubDaemon]:
    folder = tempfile.mkdtemp(prefix="qs", dir="/tmp")
    daemon = StubDaemon(os.path.join(folder, "qumrand.sock"))
    monkeypatch.setenv("QUMRAN_SOCKET", daemon.path)
    yield daemon
    daemon.close()
    shutil.rmtree(folder, ignore_errors=True)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's way out (usage errors, --help)
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# --- people's output --------------------------------------------------------------------


def test_list_shows_running_vms_as_a_virsh_like_table(stub: StubDaemon, capsys: Any) -> None:
    stub.vms = {"web": vm("web", "running", 4242), "db-server": vm("db-server")}
    assert run(capsys, "list") == (0, " Id     Name   State\n" + "-" * 24 + "\n"
                                   " 4242   web    running\n", "")  # fmt: skip


def test_list_all_includes_shut_off_vms(stub: StubDaemon, capsys: Any) -> None:
    stub.vms = {"web": vm("web", "running", 4242), "db-server": vm("db-server")}
    code, out, _ = run(capsys, "list", "--all")
    assert code == 0
    assert out.splitlines() == [
        " Id     Name        State",
        "-" * 30,
        " 4242   web         running",
        " -      db-server   shut off",
    ]
    assert stub.requests[-1][:2] == ("GET", "/v1/vms?all=true")


def test_empty_list_is_just_the_header(stub: StubDaemon, capsys: Any) -> None:
    assert run(capsys, "list")[1].splitlines() == [" Id   Name   State", "-" * 20]


def test_dominfo(stub: StubDaemon, capsys: Any) -> None:
    stub.vms = {"web": vm("web", "running", 4242, autostart=True)}
    code, out, _ = run(capsys, "dominfo", "web")
    assert code == 0
    assert out.splitlines() == [
        "Name:           web",
        "UUID:           uuid-web",
        "Owner:          0 (root)",
        "Hypervisor:     qemu",
        "State:          running",
        "Reason:         booted",
        "PID:            4242",
        "CPU(s):         2",
        "Max memory:     512 MiB",
        "CPU time:       1.2s",
        "Autostart:      enable",
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["domstate", "web"], "shut off\n"), (["domstate", "web", "--reason"], "shut off (user)\n")],
)
def test_domstate(stub: StubDaemon, capsys: Any, argv: list[str], expected: str) -> None:
    stub.vms = {"web": vm("web")}
    assert run(capsys, *argv) == (0, expected, "")


QEMU_REASON = (
    "TCG: /dev/kvm answers but the CPU has no vmx/svm flag (a software KVM cannot run a "
    "stock kernel)"
)
NATIVE_REASON = "needs a hardware KVM: " + QEMU_REASON.removeprefix("TCG: ")


def test_host_fits_80_columns_with_the_reasons_under_the_table(
    stub: StubDaemon, capsys: Any
) -> None:
    code, out, _ = run(capsys, "host")
    assert code == 0
    assert "Hostname:       h1\n" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    table, reasons = out.split("\n\n")[1:]
    assert table.splitlines()[2:] == [
        " qemu     tcg           yes         7.2",
        " native   kvm           no          qumran-vmm",
    ]
    assert reasons.splitlines() == [
        " qemu:    TCG: /dev/kvm answers but the CPU has no vmx/svm flag (a software KVM",
        "          cannot run a stock kernel)",
        " native:  needs a hardware KVM: /dev/kvm answers but the CPU has no vmx/svm flag",
        "          (a software KVM cannot run a stock kernel)",
    ]


@pytest.mark.parametrize(
    ("command", "method", "path", "message"),
    [
        ("start", "POST", "/v1/vms/web/start", "VM 'web' started"),
        ("shutdown", "POST", "/v1/vms/web/shutdown", "VM 'web' is being shut down"),
        ("destroy", "POST", "/v1/vms/web/destroy", "VM 'web' destroyed"),
        ("reboot", "POST", "/v1/vms/web/reboot", "VM 'web' is being rebooted"),
        ("reset", "POST", "/v1/vms/web/reset", "VM 'web' was reset"),
        ("suspend", "POST", "/v1/vms/web/suspend", "VM 'web' suspended"),
        ("resume", "POST", "/v1/vms/web/resume", "VM 'web' resumed"),
        ("undefine", "DELETE", "/v1/vms/web", "VM 'web' undefined"),
    ],
)
def test_lifecycle_commands(
    stub: StubDaemon, capsys: Any, command: str, method: str, path: str, message: str
) -> None:
    stub.vms = {"web": vm("web")}
    assert run(capsys, command, "web") == (0, message + "\n", "")
    assert stub.requests == [(method, path, None)]


@pytest.mark.parametrize(("flag", "enabled"), [([], True), (["--disable"], False)])
def test_autostart(stub: StubDaemon, capsys: Any, flag: list[str], enabled: bool) -> None:
    stub.vms = {"web": vm("web")}
    code, out, _ = run(capsys, "autostart", "web", *flag)
    assert (code, stub.vms["web"]["autostart"]) == (0, enabled)
    assert stub.requests == [("PUT", "/v1/vms/web/autostart", {"enabled": enabled})]
    assert out == f"VM 'web' {'marked' if enabled else 'unmarked'} as autostarted\n"


def test_define_reads_yaml_and_resolves_paths(
    stub: StubDaemon, capsys: Any, tmp_path: Path
) -> None:
    (tmp_path / "web.yaml").write_text("name: web\nmemory: 256M\nboot:\n  kernel: vmlinuz\n")
    code, out, _ = run(capsys, "define", str(tmp_path / "web.yaml"))
    assert code == 0
    assert out == f"VM 'web' defined from {tmp_path / 'web.yaml'}\n"
    doc = stub.requests[0][2]
    assert doc == {"name": "web", "memory": "256M", "boot": {"kernel": str(tmp_path / "vmlinuz")}}


def test_events(stub: StubDaemon, capsys: Any) -> None:
    stub.events = [
        {"id": 1, "time": 0, "vm": "web", "owner": 0, "event": "started", "state": "running",
         "reason": "booted", "detail": "pid 4242"},
    ]  # fmt: skip
    code, out, _ = run(capsys, "events")
    assert code == 0
    assert out.endswith("  web  started  running (booted)  pid 4242\n")


# --- scripts' output --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_prints_the_apis_documents(stub: StubDaemon, capsys: Any, where: str) -> None:
    stub.vms = {"web": vm("web", "running", 4242), "db": vm("db")}
    argv = ["--json", "list", "--all"] if where == "before" else ["list", "--all", "--json"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert json.loads(out) == list(stub.vms.values())


def test_json_for_actions_and_state(stub: StubDaemon, capsys: Any) -> None:
    stub.vms = {"web": vm("web")}
    code, out, _ = run(capsys, "start", "web", "--json")
    assert (code, json.loads(out)["state"]) == (0, "running")
    code, out, _ = run(capsys, "domstate", "web", "--json")
    assert json.loads(out) == {"state": "running", "reason": "booted"}


def test_socket_option_wins_over_the_environment(
    stub: StubDaemon, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUMRAN_SOCKET", "/nonexistent/qumrand.sock")
    assert run(capsys, "--socket", stub.path, "list")[0] == 0
    assert run(capsys, "list", "--socket", stub.path)[0] == 0


# --- failures -----------------------------------------------------------------------------


def test_daemon_errors_are_one_line_and_exit_1(stub: StubDaemon, capsys: Any) -> None:
    assert run(capsys, "start", "nope") == (1, "", "error: no VM named 'nope'\n")
    stub.vms = {"web": vm("web", "running", 1)}
    assert run(capsys, "start", "web") == (1, "", "error: already running\n")


def test_no_daemon(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUMRAN_SOCKET", "/nonexistent/qumrand.sock")
    code, out, err = run(capsys, "list")
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot connect to qumrand at /nonexistent/qumrand.sock")
    assert "`qumrand`" in err and "`sudo qumrand`" in err
    assert err.count("\n") == 1


def test_unreadable_definition_file(stub: StubDaemon, capsys: Any, tmp_path: Path) -> None:
    code, _, err = run(capsys, "define", str(tmp_path / "missing.yaml"))
    assert code == 1
    assert err == f"error: cannot read {tmp_path / 'missing.yaml'}: No such file or directory\n"
    assert stub.requests == []


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["lsit"], "invalid choice: 'lsit'"),
        (["start"], "the following arguments are required: NAME"),
        (["list", "--bogus"], "unrecognized arguments: --bogus"),
        (["image"], "the following arguments are required: IMAGE"),
        (["console", "web", "--timeout", "soon"], "invalid float value: 'soon'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys: Any, argv: list[str], complaint: str) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and complaint in err
    assert err.count("\n") == 1


def test_help_lists_every_command(capsys: Any) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("list", "define", "start", "console", "dominfo", "events", "image"):
        assert f"    {command} " in out


# --- as a process ---------------------------------------------------------------------------

HEAVY = (
    "pydantic",
    "yaml",
    "websockets",
    "asyncio",
    "http.client",
    "email",
    "fastapi",
    "typing",
    "socket",
)


def test_list_imports_nothing_heavy(stub: StubDaemon) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "qumran.cli.main", "list", "--all"],
        capture_output=True, text=True, env={**os.environ, "QUMRAN_SOCKET": stub.path},
        timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.split("|")[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "qumran.client.wire" in imported  # the report is real
    heavy = {m for m in imported if m.split(".")[0] in HEAVY or m in HEAVY}
    assert heavy == set()


def test_ctrl_c_while_following_events_exits_130_quietly(stub: StubDaemon) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qumran.cli.main", "events", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "QUMRAN_SOCKET": stub.path},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        stub.events.append({"id": 5, "time": 0, "vm": "web", "owner": 0, "event": "started",
                            "state": "running", "reason": "booted", "detail": ""})  # fmt: skip
        assert "web  started  running (booted)" in proc.stdout.readline()
        stub.events.append({"id": 6, "time": 0, "vm": "web", "owner": 0, "event": "stopped",
                            "state": "shutoff", "reason": "user", "detail": ""})  # fmt: skip
        assert "web  stopped  shut off (user)" in proc.stdout.readline()
        assert [r[1] for r in stub.requests][-1].startswith("/v1/events?since=5")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        proc.kill()
        proc.wait()


def test_entry_point_exit_status() -> None:
    qumran = Path(sys.executable).with_name("qumran")
    if not qumran.exists():
        pytest.skip("the qumran entry point is not installed next to this interpreter")
    env = {**os.environ, "QUMRAN_SOCKET": "/nonexistent/qumrand.sock"}
    proc = subprocess.run([str(qumran), "host"], capture_output=True, text=True, env=env,
                          timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cannot connect to qumrand")
    assert "Traceback" not in proc.stderr
    started = time.monotonic()
    assert subprocess.run([str(qumran), "--help"], capture_output=True, check=False).returncode == 0
    assert time.monotonic() - started < 10
