"""libvirt's graphical clients against a real qumrand, on a real X server (Xvfb): the
virt-manager window lists Qumran's VMs and starts one (the VM's state seen through
qumrand's own API), virt-manager's console and virt-viewer show a QEMU guest's VNC display
(the connection handed to them by DOMAIN_OPEN_GRAPHICS_FD). Screenshots are kept in
artifacts/libvirt/."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageGrab

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from qumran.config import domxml
from qumran.config.files import read_definition
from qumran.config.validate import validate_spec
from qumran.images.demo import build_demo

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Debian's xvfb"),
]
needs_manager = pytest.mark.skipif(
    shutil.which("virt-manager") is None or not Path("/usr/bin/dbus-run-session").exists(),
    reason="needs Debian's virt-manager and dbus",
)
needs_viewer = pytest.mark.skipif(shutil.which("virt-viewer") is None,
                                  reason="needs Debian's virt-viewer")  # fmt: skip

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "libvirt"
DRIVER = Path(__file__).with_name("virt_manager_ui.py")
STEP = 150.0  # seconds for one step of a GUI program on a loaded machine


@pytest.fixture(scope="module")
def qemu_daemon() -> Iterator[Daemon]:
    root = short_tmpdir()
    daemon = Daemon(root, driver="real")
    daemon.start()
    yield daemon
    daemon.cleanup()
    remove_tmpdir(root)


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A new X server; it names its display on a pipe once it accepts clients."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    assert number, "Xvfb did not start"
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(timeout=30)


def session_env(display: str, home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    (home / "run").mkdir(mode=0o700, exist_ok=True)
    # Their own settings and caches: a person's, not the machine's. NO_AT_BRIDGE=1 would
    # hide virt-manager's accessibility tree from the driver.
    env = {key: value for key, value in os.environ.items() if key != "NO_AT_BRIDGE"}
    return {**env, "DISPLAY": display, "HOME": str(home),
            "XDG_RUNTIME_DIR": str(home / "run"), "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_CACHE_HOME": str(home / "cache")}  # fmt: skip


def define(daemon: Daemon, name: str, uri: str) -> None:
    """The demo guest with a VNC display, defined through virsh."""
    image = build_demo()
    spec = validate_spec(read_definition(image.kernel.parent / "demo.yaml"))
    spec = spec.model_copy(update={"graphics": True})
    path = Path(daemon.root) / f"{name}.xml"
    path.write_text(domxml.to_xml(name, str(uuid.uuid4()), spec))
    proc = subprocess.run(["virsh", "-c", uri, "define", str(path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def virsh(uri: str, *args: str) -> None:
    proc = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


class Lines:
    """A program's output, line by line, read as it comes (a thread per pipe)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, text: str, timeout: float = STEP, fail: str | None = None) -> str:
        """The first line with ``text``; an AssertionError at once on a line with ``fail``
        (the program's own word that it will not get there), or when time is up."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
            if fail is not None and fail in line:
                break
        tail = "".join(self.seen[-40:])
        raise AssertionError(f"no {text!r} from {self.proc.args[0]}; its last lines:\n{tail}")


def shows_a_guest(shot: Image.Image, top: int) -> bool:
    """A guest's text console in the window, under its bars: mostly black with light text
    — not an empty (all black) display, nor one of the programs' own status pages (grey
    or white, with a line of text). The window is what is not the X server's black."""
    gray = shot.convert("L")
    box = gray.point(lambda v: 255 if v else 0).getbbox()
    if box is None:
        return False
    area = gray.crop((box[0], max(box[1], top), box[2], box[3]))
    counts = area.histogram()
    black, light = sum(counts[:8]), sum(counts[129:])
    return black > area.width * area.height // 2 and light > 200


def wait_for_guest(display: str, top: int, name: str) -> Image.Image:
    """The screen once it shows the guest; a frame can come a moment after the viewer
    says it connected, so the screen is looked at again until it does (or time is up)."""
    deadline = time.monotonic() + 60
    while True:
        shot = ImageGrab.grab(xdisplay=display)
        if shows_a_guest(shot, top) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot.save(ARTIFACTS / name)
    assert shows_a_guest(shot, top), f"no guest display on screen: see artifacts/libvirt/{name}"
    return shot


def stop(proc: subprocess.Popen[str]) -> None:
    """End a program and all it started (a D-Bus session's daemons, the accessibility
    bus): each runs in a process group of its own, started with start_new_session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@needs_manager
def test_virt_manager_lists_the_vms_and_starts_one(
    qemu_daemon: Daemon, display: str, tmp_path: Path
) -> None:
    uri = f"qemu+unix:///system?socket={qemu_daemon.root / 'libvirt-sock'}"
    for name in ("web1", "db1"):
        define(qemu_daemon, name, uri)
    log = tmp_path / "virt-manager.log"
    driver = subprocess.Popen(
        ["dbus-run-session", "--", "/usr/bin/python3", str(DRIVER), uri, str(log), "web1",
         "web1", "db1"],
        env=session_env(display, tmp_path / "home"), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines = Lines(driver)
    try:
        lines.wait_for("listed web1 db1")
        lines.wait_for("clicked")
        assert qemu_daemon.wait_state("web1", "running", timeout=STEP)["state"] == "running"
        lines.wait_for("running")  # and the window says so
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        ImageGrab.grab(xdisplay=display).save(ARTIFACTS / "virt-manager.png")
        assert qemu_daemon.vm("db1")["state"] == "shutoff"
        assert driver.stdin is not None
        driver.stdin.write("done\n")
        driver.stdin.flush()
        assert driver.wait(timeout=60) == 0, "".join(lines.seen)
    finally:
        stop(driver)
        (ARTIFACTS / "virt-manager.log").write_bytes(log.read_bytes() if log.exists() else b"")
        # What virt-manager asked for that qumrand answered VIR_ERR_NO_SUPPORT (it goes on
        # without each), for the record: qumrand logs each such call.
        unsupported = sorted({line.split("libvirt socket: ")[1].split(" is not")[0]
                              for line in qemu_daemon.log.read_text().splitlines()
                              if "is not implemented" in line})  # fmt: skip
        (ARTIFACTS / "virt-manager-unsupported.txt").write_text("\n".join(unsupported) + "\n")
        virsh(uri, "destroy", "web1")


@needs_manager
def test_virt_manager_console_shows_the_guest(
    qemu_daemon: Daemon, display: str, tmp_path: Path
) -> None:
    # virt-manager opens a console only for a URI with no transport ("qemu+unix" makes it
    # take the host for a remote one), so this is the URI to give it.
    uri = f"qemu:///system?socket={qemu_daemon.root / 'libvirt-sock'}"
    define(qemu_daemon, "desk1", uri)
    virsh(uri, "start", "desk1")
    manager = subprocess.Popen(
        ["dbus-run-session", "--", "virt-manager", "--debug", "--no-fork", "-c", uri,
         "--show-domain-console", "desk1"],
        env=session_env(display, tmp_path / "home"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        Lines(manager).wait_for("Viewer connected", fail="Error connecting to graphical console")
        wait_for_guest(display, 80, "virt-manager-console.png")  # below its menu and toolbar
    finally:
        stop(manager)
        virsh(uri, "destroy", "desk1")


@needs_viewer
def test_virt_viewer_shows_the_guest(qemu_daemon: Daemon, display: str, tmp_path: Path) -> None:
    uri = f"qemu+unix:///system?socket={qemu_daemon.root / 'libvirt-sock'}"
    define(qemu_daemon, "view1", uri)
    virsh(uri, "start", "view1")
    # --attach: the display is reached through libvirt (a Qumran VM's VNC has no port or
    # socket of its own), which needs a connection that is not read-only.
    viewer = subprocess.Popen(
        ["virt-viewer", "--attach", "--debug", "-c", uri, "view1"],
        env=session_env(display, tmp_path / "home"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        lines = Lines(viewer)
        # The VNC handshake is done (the guest's size); "fd=-1": no connection was handed over.
        lines.wait_for("desktop resize", fail="fd=-1")
        lines.wait_for("notebook show display")  # and the window shows it, not a status
        wait_for_guest(display, 60, "virt-viewer.png")  # below its header bar
    finally:
        stop(viewer)
        virsh(uri, "destroy", "view1")
