"""qumrand: the management daemon (the libvirtd role).

Settings: ``qumran.daemon.config`` (defaults, the settings file, the command line).
Sockets: bound here, or passed in by systemd or by the qumrand before a restart
(``qumran.daemon.activation``). SIGTERM stops it, SIGHUP restarts it in place; running
VMs keep running either way and the next qumrand re-attaches to them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qumran.config.paths import is_fallback
from qumran.daemon import activation, admin, config, limits
from qumran.drivers.base import Driver
from qumran.errors import QumranError

if TYPE_CHECKING:
    from qumran.daemon.manager import Manager

log = logging.getLogger("qumran.daemon")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options given (absent ones are left to the settings file; see ``config``)."""
    return config.build_parser().parse_args(argv)


def make_drivers(kind: str) -> dict[str, Driver]:
    if kind == "fake":
        from qumran.drivers.fake import FakeDriver

        fake = FakeDriver()
        return {"qemu": fake, "native": fake}
    from qumran.drivers.qemu import QemuDriver

    drivers: dict[str, Driver] = {"qemu": QemuDriver()}
    with contextlib.suppress(ImportError):
        from qumran.drivers.native import NativeDriver

        drivers["native"] = NativeDriver()
    return drivers


def bind_socket(path: str) -> socket.socket:
    """Bind the API socket; refuse if another daemon answers on it, else clear a stale one."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    except OSError as exc:
        raise _socket_problem(path, exc) from None
    else:
        raise QumranError(
            f"another qumrand is already listening on {path}; stop it first, "
            "or give this one another --socket"
        )
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        sock.bind(path)
        os.chmod(path, 0o666)  # anyone may connect; SO_PEERCRED decides what they may do
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise _socket_problem(path, exc) from None
    return sock


def _socket_problem(path: str, exc: OSError) -> QumranError:
    return QumranError(
        f"cannot listen on {path}: {exc.strerror or exc}; "
        "choose another path with --socket (or QUMRAN_SOCKET)"
    )


def prepare_run_dir(run: Path) -> None:
    """The run directory must exist and be ours to write: each VM's files go below it."""
    if is_fallback(run):
        prepare_private_dir(run)
        return
    try:
        run.mkdir(parents=True, exist_ok=True, mode=0o755)
        if not os.access(run, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise QumranError(
            f"cannot use the run directory {run}: {exc.strerror or exc}; make it writable "
            "by the daemon's user or choose another with --run-dir"
        ) from None


def prepare_private_dir(path: Path) -> None:
    """/tmp/qumran-UID, for a user without a runtime folder: made 0700, and used only if
    it is a folder of ours -- anyone can create a name in /tmp first (a squatter's folder
    or symlink would get our sockets, or our files written where it points)."""
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise QumranError(
            f"cannot use {path} as the runtime folder: {why}; remove it, or set "
            "XDG_RUNTIME_DIR to a folder of yours"
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise QumranError(
                f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): another "
                "user made it first; remove it, or set XDG_RUNTIME_DIR to a folder of yours"
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)  # ours: close it to others before putting sockets in it
    finally:
        os.close(fd)


# How long, on a restart, a connection accepted but still silent gets to send its request
# before the old qumrand lets go of it (uvicorn would close it unanswered at once). Ours
# send at once; this bounds what a client that never sends can hold up.
FIRST_REQUEST_GRACE = 1.0


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server without its signal capture: qumrand handles SIGTERM itself
        (uvicorn would re-raise the signal on the way out, killing the daemon before it
        has let go of its VMs). On a restart (``handing_over``), it stops accepting,
        lets every connection already accepted send its request, and answers those
        before it goes; what was not accepted waits in the backlog for the next qumrand."""

        handing_over = False

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.handing_over:
                for server in self.servers:
                    server.close()  # our duplicate keeps the socket listening
                await self._let_requests_arrive()
            await super().shutdown(sockets)

        async def _let_requests_arrive(self) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + FIRST_REQUEST_GRACE
            # uvicorn has no event for "a request began"; a short poll, bounded.
            while loop.time() < deadline and any(
                _silent(c) for c in self.server_state.connections
            ):
                await asyncio.sleep(0.005)

    return Server


def _silent(connection: Any) -> bool:
    """An HTTP connection accepted that has not sent (all of) its first request yet."""
    import h11

    conn = getattr(connection, "conn", None)
    transport = getattr(connection, "transport", None)
    return (
        getattr(connection, "cycle", False) is None
        and isinstance(conn, h11.Connection)
        and conn.their_state is h11.IDLE
        and transport is not None
        and not transport.is_closing()
    )


def bind_web(address: str) -> socket.socket:
    """Bind the web manager's TCP address (before anything else, so a busy port fails fast)."""
    try:
        host, port = config.parse_address(address)
    except ValueError as exc:
        raise QumranError(f"the web manager's address: {exc}") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise QumranError(
            f"cannot serve the web manager on {address}: {exc.strerror}; "
            "choose another address with --web HOST:PORT or in the settings file ([web] address)"
        ) from None
    sock.listen(128)
    return sock


def _web_listener(address: str | None, passed: socket.socket | None) -> socket.socket | None:
    """The web manager's socket: the one the last qumrand passed on if it is still at the
    configured address, else a new one (or none, the web manager being off)."""
    if passed is not None:
        if address is not None and _same_address(passed, address):
            return passed
        passed.close()
    return bind_web(address) if address else None


def _same_address(sock: socket.socket, address: str) -> bool:
    host, port = config.parse_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return sock.getsockname()[:2] in [info[4][:2] for info in infos]


def _web_server(address: str, manager: Any, app: Any, bounds: limits.Limits) -> Any:
    """The web manager on TCP; its login tokens are issued on the UNIX API (`qumran web`)."""
    import uvicorn

    from qumran.daemon.connections import web_protocols
    from qumran.web.api import token_router
    from qumran.web.auth import WebAuth
    from qumran.web.server import build_web_app

    auth = WebAuth(f"http://{address}")
    app.include_router(token_router(auth))
    config = uvicorn.Config(
        limits.BodyLimit(build_web_app(manager, auth), bounds.max_body),
        **web_protocols(bounds),
        timeout_keep_alive=bounds.idle_timeout,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    log.info("web manager on http://%s (log in with `qumran web`)", address)
    if address.rpartition(":")[0].strip("[]") not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "the web manager speaks plain HTTP: browsers keep its Secure session cookie only "
            "on a loopback address; elsewhere put a TLS proxy in front of it"
        )
    return _server_class()(config)


@dataclass
class Listening:
    """The API socket and where it came from; on a restart, the sockets handed on."""

    sock: socket.socket
    path: str
    source: str  # "qumrand": bound here (unlinked at the end); "systemd": the socket unit's
    web: socket.socket | None = None
    handover: dict[str, socket.socket] | None = None  # set by SIGHUP: restart with these


async def serve(settings: config.Settings) -> Listening | None:
    """Run qumrand until SIGTERM (None) or SIGHUP (the sockets to restart with)."""
    from qumran.daemon.manager import Manager
    from qumran.daemon.store import Store

    limits.raise_fd_limit()  # before the socket is bound: up to the caps' needs from the start
    passed, source = activation.listen_fds()
    run, state = settings.run_dir, settings.state_dir
    with contextlib.ExitStack() as opened:  # what start-up got before a failure, let go
        for extra in passed.values():
            opened.callback(extra.close)
        prepare_run_dir(run)
        if is_fallback(run):
            log.warning(
                "no runtime folder for uid %d ($XDG_RUNTIME_DIR unset or not yours, no "
                "/run/user/%d): VMs' run files and the socket go in %s, private to this user",
                os.geteuid(), os.geteuid(), run,
            )  # fmt: skip
        web_sock = _web_listener(settings.web, passed.pop(activation.WEB, None))
        if web_sock is not None:
            opened.callback(web_sock.close)
        # The socket before the store: a second qumrand stops here, not touching the store.
        listening = _api_listener(settings.socket, passed.pop(activation.API, None), source)
        listening.web = web_sock
        opened.callback(_let_go, listening)
        store = Store(state / "qumran.db")
        opened.callback(store.close)
        manager = Manager(store, make_drivers(settings.driver), run)
        await _serve(settings, manager, listening)
        return listening if listening.handover is not None else None


def _api_listener(path: str, passed: socket.socket | None, source: str) -> Listening:
    if passed is not None:
        name = passed.getsockname()
        bound = name if isinstance(name, str) else name.decode(errors="replace")
        if bound != path:
            log.info("listening on %s, the socket %s passed (not on %s)", bound, source, path)
        return Listening(passed, bound, source)
    if is_fallback(Path(path).parent):
        prepare_private_dir(Path(path).parent)
    return Listening(bind_socket(path), path, "qumrand")


def _let_go(listening: Listening) -> None:
    """At the end: close the API socket; unlink it if we bound it and nobody takes it on."""
    listening.sock.close()
    if listening.source == "qumrand" and listening.handover is None:
        _unlink(listening.path)


async def _serve(settings: config.Settings, manager: Manager, listening: Listening) -> None:
    import uvicorn

    from qumran.daemon.api import build_app
    from qumran.daemon.peer import api_protocols

    try:
        await manager.restore()
    except BaseException:
        await manager.close()
        raise
    app = build_app(manager)
    unit = activation.under_systemd_service()
    app.state.daemon = admin.describe(settings, listening.path, listening.source, unit)
    bounds = settings.limits
    web_sock = listening.web
    web = _web_server(settings.web, manager, app, bounds) if settings.web else None
    config = uvicorn.Config(
        limits.BodyLimit(app, bounds.max_body),
        **api_protocols(bounds),
        timeout_keep_alive=bounds.idle_timeout,
        lifespan="off",
        log_level="warning",
        access_log=False,
        ws_ping_interval=None,
    )
    server = _server_class()(config)
    servers = [server] if web is None else [server, web]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        activation.notify("STOPPING=1")
        if listening.handover is not None:  # a stop during a restart wins: no new qumrand
            for dup in listening.handover.values():
                dup.close()
            listening.handover = None
        for each in servers:
            each.should_exit = True

    def restart() -> None:
        if listening.handover is not None:
            return  # one restart at a time
        # Duplicates, taken before uvicorn closes its sockets: they keep listening.
        listening.handover = {activation.API: listening.sock.dup()}
        if web_sock is not None:
            listening.handover[activation.WEB] = web_sock.dup()
        activation.notify(f"RELOADING=1\nMONOTONIC_USEC={activation.monotonic_usec()}")
        log.info("restarting in place (SIGHUP): the sockets stay open; VMs keep running")
        for each in servers:
            each.handing_over = True
            each.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, restart)
    if _early_restart.is_set():  # SIGHUP came while qumrand was starting
        restart()
    from_where = "" if listening.source == "qumrand" else f", socket from {listening.source}"
    log.info("qumrand listening on %s (run dir %s, state %s%s)", listening.path,
             manager.run_dir, manager.store.path, from_where)  # fmt: skip
    activation.notify(f"READY=1\nSTATUS=listening on {listening.path}\nMAINPID={os.getpid()}")
    try:
        if web is None:
            await server.serve(sockets=[listening.sock])
        else:
            async with asyncio.TaskGroup() as group:
                group.create_task(server.serve(sockets=[listening.sock]))
                group.create_task(web.serve(sockets=[web_sock]))
    finally:
        await manager.close()
        if listening.handover is None:
            log.info("qumrand stopped; running VMs keep running")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# Set by a SIGHUP that comes before the event loop handles it (during start-up).
_early_restart = threading.Event()


def main(argv: list[str] | None = None) -> int:
    # A restart execs us with SIGHUP ignored (see activation.reexec), so that a second
    # SIGHUP cannot kill the new qumrand before it handles them; from here on, one is
    # remembered. (A handler, not SIG_IGN, so VM processes started later get the default.)
    signal.signal(signal.SIGHUP, lambda _sig, _frame: _early_restart.set())
    args = parse_args(argv)
    activation.take_notify_socket()
    try:
        settings = config.resolve(args)
    except QumranError as exc:
        print(f"qumrand: {exc.message}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.config_file is not None:
        log.info("settings from %s", settings.config_file)
    try:
        listening = asyncio.run(serve(settings))
    except QumranError as exc:
        print(f"qumrand: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for people; the traceback for --log-level debug
        log.debug("qumrand failed", exc_info=exc)
        print(f"qumrand: internal error: {exc!r} (--log-level debug shows where)", file=sys.stderr)
        return 1
    if listening is not None and listening.handover is not None:
        try:
            activation.reexec(listening.handover, listening.source)
        except OSError as exc:
            print(f"qumrand: cannot restart: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
