"""qumrand: the management daemon (the libvirtd role).

Settings: ``qumran.daemon.config`` (defaults, the settings file, the command line).
Sockets: bound here, or passed in by systemd or by the qumrand before a restart
(``qumran.daemon.activation``). SIGTERM stops it, SIGHUP restarts it in place; running
VMs keep running either way and the next qumrand re-attaches to them.

Start-up is in two steps, so that a (re)started qumrand answers at once: with the
sockets and the store, list requests are answered (``qumran.daemon.early``) while the
rest loads in a thread (the API's framework, the drivers) and the VMs are re-attached;
then the full server takes over every other request, none refused or lost. This module
imports only what the first step needs; the libvirt protocol loads when its socket
first gets a client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from qumran.config.paths import is_fallback
from qumran.daemon import activation, admin, config, limits, listeners
from qumran.daemon.early import EarlyServer, Listing, readable
from qumran.errors import QumranError

if TYPE_CHECKING:
    from qumran.daemon.manager import Manager
    from qumran.drivers.base import Driver

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


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server without its signal capture: qumrand handles SIGTERM itself
        (uvicorn would re-raise the signal on the way out, killing the daemon before it
        has let go of its VMs). On a restart (``handing_over``), it stops accepting,
        lets every connection already accepted send its request, and answers those
        before it goes; what was not accepted waits in the backlog for the next qumrand."""

        handing_over = False
        _exit_requested = False
        _exit: asyncio.Event | None = None
        early: EarlyServer | None = None  # gives its held connections once we serve
        _adopting: set[asyncio.Task[Any]] = set()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        # uvicorn wakes ten times a second to look at should_exit (and refresh its Date
        # header): 0.17 % of a CPU for an idle qumrand. Here setting should_exit wakes the
        # server instead, and an idle daemon does not run at all. (Date is off: neither
        # the API's clients nor the web manager's pages use it.)
        @property
        def should_exit(self) -> bool:
            return self._exit_requested

        @should_exit.setter
        def should_exit(self, value: bool) -> None:
            self._exit_requested = value
            if value:
                self._exit_event().set()

        def _exit_event(self) -> asyncio.Event:
            if self._exit is None:
                self._exit = asyncio.Event()
            return self._exit

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and self.early is not None:  # serving: the early server's
                self.early.hand_over(self._adopt)  # connections are ours (also when a
                self.early = None  # restart came during start-up: answered, then gone)

        async def main_loop(self) -> None:
            await self.on_tick(0)  # the default headers
            await self._exit_event().wait()

        def _adopt(self, conn: socket.socket, data: bytes) -> None:
            """Serve a connection the early server accepted, ``data`` read from it."""
            config, state, app_state = self.config, self.server_state, self.lifespan.state

            def protocol() -> asyncio.Protocol:
                made: Any = config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=state, app_state=app_state
                )
                made.replay = data  # before anything more is read (connections.py)
                return cast(asyncio.Protocol, made)

            loop = asyncio.get_running_loop()
            task = loop.create_task(loop.connect_accepted_socket(protocol, conn))
            self._adopting.add(task)
            task.add_done_callback(self._adopted)

        def _adopted(self, task: asyncio.Task[Any]) -> None:
            self._adopting.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.warning("a connection accepted while starting: %s", task.exception())

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            """uvicorn's, without its fixed waits: it sleeps 0.1 s, then looks every
            0.1 s for connections and tasks to end, 100-200 ms that a restart spends
            doing nothing. Here the look is every few ms. (No lifespan: it is off.)"""
            for server in self.servers:  # every connection accepted reaches uvicorn
                await listeners.stop_accepting(server)
            if self.handing_over:
                await self._let_requests_arrive()
            for sock in sockets or []:
                sock.close()
            state = self.server_state
            for connection in list(state.connections):
                connection.shutdown()  # idle ones close now, busy ones after their answer
            try:
                async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                    while (state.connections or state.tasks) and not self.force_exit:
                        await asyncio.sleep(0.005)
            except TimeoutError:
                log.error("cancelling %d request(s) still running at the end", len(state.tasks))
                for task in state.tasks:
                    task.cancel()
            for server in self.servers:
                await server.wait_closed()

        async def _let_requests_arrive(self) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + listeners.FIRST_REQUEST_GRACE
            # uvicorn has no event for "a request began"; a short poll, bounded.
            while loop.time() < deadline and any(_silent(c) for c in self.server_state.connections):
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
        date_header=False,
    )
    log.info("web manager on http://%s (log in with `qumran web`)", address)
    if address.rpartition(":")[0].strip("[]") not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "the web manager speaks plain HTTP: browsers keep its Secure session cookie only "
            "on a loopback address; elsewhere put a TLS proxy in front of it"
        )
    return _server_class()(config)


async def serve(settings: config.Settings) -> listeners.Listening | None:
    """Run qumrand until SIGTERM (None) or SIGHUP (the sockets to restart with)."""
    from qumran.daemon.store import Store

    limits.raise_fd_limit()  # before the socket is bound: up to the caps' needs from the start
    passed, source = activation.listen_fds()
    run, state = settings.run_dir, settings.state_dir
    with contextlib.ExitStack() as opened:  # what start-up got before a failure, let go
        for extra in passed.values():
            opened.callback(extra.close)
        listeners.prepare_run_dir(run)
        if is_fallback(run):
            log.warning(
                "no runtime folder for uid %d ($XDG_RUNTIME_DIR unset or not yours, no "
                "/run/user/%d): VMs' run files and the socket go in %s, private to this user",
                os.geteuid(), os.geteuid(), run,
            )  # fmt: skip
        web_sock = listeners.web_listener(settings.web, passed.pop(activation.WEB, None))
        if web_sock is not None:
            opened.callback(web_sock.close)
        # The socket before the store: a second qumrand stops here, not touching the store.
        passed_api = passed.pop(activation.API, None)
        listening = listeners.api_listener(settings.socket, passed_api, source)
        listening.web = web_sock
        opened.callback(listeners.let_go, listening)
        libvirt_sock = _libvirt_listener(settings, passed.pop(activation.LIBVIRT, None))
        if libvirt_sock is not None:
            opened.callback(_close_libvirt, libvirt_sock, settings.libvirt_socket, listening)
        store = Store(state / "qumran.db")
        opened.callback(store.close)
        early = EarlyServer(listening.sock, Listing(store, os.geteuid()))
        early.start()
        opened.callback(early.abandon)  # nothing left to abandon once handed over
        # The rest loads in a thread, while the early server answers on this one.
        drivers = await asyncio.to_thread(_load, settings.driver)
        from qumran.daemon.manager import Manager

        manager = Manager(store, drivers, run, manage_networks=settings.networks_enabled,
                          default_network=settings.make_default_network)  # fmt: skip
        await _serve(settings, manager, listening, libvirt_sock, early)
        return listening if listening.handover is not None else None


def _load(driver: str) -> dict[str, Driver]:
    """What the full daemon needs beyond the early server: imported here, off the event
    loop (a thread), so that loading it does not hold up the early answers."""
    import uvicorn  # noqa: F401

    import qumran.daemon.api
    import qumran.daemon.manager
    import qumran.daemon.peer  # noqa: F401

    return make_drivers(driver)


def _libvirt_listener(
    settings: config.Settings, passed: socket.socket | None
) -> socket.socket | None:
    """libvirt's protocol on its own socket (docs/libvirt.md), bound like the API's; or
    the one the qumrand before a restart passed on, if it is still at the same path."""
    path = settings.libvirt_socket
    if passed is not None:
        if path is not None and passed.getsockname() == path:
            return passed
        passed.close()
    if path is None:
        return None
    try:
        return listeners.bind_socket(path)
    except QumranError as exc:
        raise QumranError(
            f"libvirt protocol: {exc.message.split(';')[0]}; choose another path with "
            "--libvirt-socket, or turn it off with --no-libvirt ([libvirt] in the settings)"
        ) from None


def _close_libvirt(sock: socket.socket, path: str | None, listening: listeners.Listening) -> None:
    sock.close()
    if path is not None and listening.handover is None:  # a restart's qumrand keeps it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _serve(
    settings: config.Settings,
    manager: Manager,
    listening: listeners.Listening,
    libvirt_sock: socket.socket | None = None,
    early: EarlyServer | None = None,
) -> None:
    # The servers are built in a thread while the VMs are re-attached on the loop:
    # building the API's routes is CPU, re-attaching mostly waits on monitors.
    building = asyncio.ensure_future(asyncio.to_thread(_servers, settings, manager, listening))
    try:
        await manager.restore()
    except BaseException:
        await asyncio.gather(building, return_exceptions=True)
        await manager.close()
        raise
    server, web = await building
    server.early = early
    web_sock = listening.web
    bounds = settings.limits
    servers = [server] if web is None else [server, web]
    loop = asyncio.get_running_loop()
    handing_over = asyncio.Event()  # the libvirt server's cue, as should_exit is uvicorn's

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
        if libvirt_sock is not None:
            listening.handover[activation.LIBVIRT] = libvirt_sock.dup()
        activation.notify(f"RELOADING=1\nMONOTONIC_USEC={activation.monotonic_usec()}")
        log.info("restarting in place (SIGHUP): the sockets stay open; VMs keep running")
        for each in servers:
            each.handing_over = True
            each.should_exit = True
        handing_over.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, restart)
    if _early_restart.is_set():  # SIGHUP came while qumrand was starting
        restart()
    from_where = "" if listening.source == "qumrand" else f", socket from {listening.source}"
    log.info("qumrand listening on %s (run dir %s, state %s%s)", listening.path,
             manager.run_dir, manager.store.path, from_where)  # fmt: skip
    activation.notify(f"READY=1\nSTATUS=listening on {listening.path}\nMAINPID={os.getpid()}")
    libvirt_task = None
    if libvirt_sock is not None:
        libvirt_task = asyncio.create_task(
            _serve_libvirt(manager, libvirt_sock, bounds, handing_over), name="libvirt protocol"
        )
        log.info("libvirt protocol on %s", settings.libvirt_socket)
    try:
        if web is None:
            await server.serve(sockets=[listening.sock])
        else:
            async with asyncio.TaskGroup() as group:
                group.create_task(server.serve(sockets=[listening.sock]))
                group.create_task(web.serve(sockets=[web_sock]))
    finally:
        if libvirt_task is not None:
            if listening.handover is None:  # stopping: its connections close now
                libvirt_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await libvirt_task  # restarting: it ends once its connections are quiet
        await manager.close()
        if listening.handover is None:
            log.info("qumrand stopped; running VMs keep running")


def _servers(
    settings: config.Settings, manager: Manager, listening: listeners.Listening
) -> tuple[Any, Any]:
    """The API's server and the web manager's (None when off), built and loaded."""
    import uvicorn

    from qumran.daemon.api import build_app
    from qumran.daemon.peer import api_protocols

    app = build_app(manager)
    unit = activation.under_systemd_service()
    app.state.daemon = admin.describe(settings, listening.path, listening.source, unit)
    bounds = settings.limits
    web = _web_server(settings.web, manager, app, bounds) if settings.web else None
    config = uvicorn.Config(
        limits.BodyLimit(app, bounds.max_body),
        **api_protocols(bounds),
        timeout_keep_alive=bounds.idle_timeout,
        lifespan="off",
        log_level="warning",
        access_log=False,
        date_header=False,
        ws_ping_interval=None,
    )
    config.load()  # imports the protocols' modules: here, not on the event loop
    if web is not None:
        web.config.load()
    return _server_class()(config), web


async def _serve_libvirt(
    manager: Manager, sock: socket.socket, bounds: limits.Limits, hand_over: asyncio.Event
) -> None:
    """libvirt's protocol, loaded when its socket first has a client waiting (most
    qumrands never get one; until then the client waits in the socket's backlog)."""
    waiting = asyncio.ensure_future(readable(sock))
    cue = asyncio.ensure_future(hand_over.wait())
    try:
        await asyncio.wait([waiting, cue], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        cue.cancel()
    if hand_over.is_set():
        return  # a restart before any client: the next qumrand serves the backlog
    module = await asyncio.to_thread(importlib.import_module, "qumran.libvirt.server")
    if hand_over.is_set():
        return
    libvirt = module.Server(manager, per_uid=bounds.per_uid, privileged=bounds.privileged,
                            packet_timeout=bounds.header_timeout)  # fmt: skip
    await libvirt.serve(sock, hand_over)


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
