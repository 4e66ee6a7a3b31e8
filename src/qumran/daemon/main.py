"""qumrand: the management daemon (the libvirtd role)."""

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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qumran.config.paths import default_socket_path, runtime_dir, state_dir
from qumran.daemon import limits
from qumran.drivers.base import Driver
from qumran.errors import QumranError

if TYPE_CHECKING:
    from qumran.daemon.manager import Manager

log = logging.getLogger("qumran.daemon")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qumrand", description="The Qumran management daemon.")
    parser.add_argument("--socket", default=None, help="API socket (default: %(default)s)")
    parser.add_argument("--state-dir", type=Path, default=None, help="where the database lives")
    parser.add_argument("--run-dir", type=Path, default=None, help="runtime files of VMs")
    parser.add_argument(
        "--driver",
        choices=("real", "fake"),
        default="real",
        help="'fake' runs stand-in VM processes instead of hypervisors (for tests)",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.add_argument(
        "--web",
        nargs="?",
        const="127.0.0.1:8090",
        default=None,
        metavar="HOST:PORT",
        help="also serve the web manager on this TCP address (alone: %(const)s)",
    )
    limits.add_options(parser)
    return parser.parse_args(argv)


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
    try:
        run.mkdir(parents=True, exist_ok=True, mode=0o755)
        if not os.access(run, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise QumranError(
            f"cannot use the run directory {run}: {exc.strerror or exc}; make it writable "
            "by the daemon's user or choose another with --run-dir"
        ) from None


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server without its signal capture: qumrand handles SIGTERM itself
        (uvicorn would re-raise the signal on the way out, killing the daemon before it
        has let go of its VMs)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


def bind_web(address: str) -> socket.socket:
    """Bind the web manager's TCP address (before anything else, so a busy port fails fast)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise QumranError(f"--web wants HOST:PORT, such as 127.0.0.1:8090 (got {address!r})")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise QumranError(
            f"cannot serve the web manager on {address}: {exc.strerror}; "
            "choose another address with --web HOST:PORT"
        ) from None
    sock.listen(128)
    return sock


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


async def serve(args: argparse.Namespace) -> None:
    from qumran.daemon.manager import Manager
    from qumran.daemon.store import Store

    limits.raise_fd_limit()  # before the socket is bound: up to the caps' needs from the start
    socket_path = args.socket or default_socket_path()
    run = args.run_dir or runtime_dir()
    state = args.state_dir or state_dir()
    with contextlib.ExitStack() as opened:  # what start-up got before a failure, let go
        prepare_run_dir(run)
        web_sock = bind_web(args.web) if args.web else None  # a busy port fails fast
        if web_sock is not None:
            opened.callback(web_sock.close)
        # The socket before the store: a second qumrand stops here, not touching the store.
        sock = bind_socket(socket_path)
        opened.callback(_unlink, socket_path)
        opened.callback(sock.close)
        store = Store(state / "qumran.db")
        opened.callback(store.close)
        manager = Manager(store, make_drivers(args.driver), run)
        await _serve(args, manager, sock, web_sock, socket_path)


async def _serve(
    args: argparse.Namespace,
    manager: Manager,
    sock: socket.socket,
    web_sock: socket.socket | None,
    socket_path: str,
) -> None:
    import uvicorn

    from qumran.daemon.api import build_app
    from qumran.daemon.peer import api_protocols

    try:
        await manager.restore()
    except BaseException:
        await manager.close()
        raise
    app = build_app(manager)
    bounds = limits.Limits.from_args(args)
    web = _web_server(args.web, manager, app, bounds) if args.web else None
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
        for each in servers:
            each.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.info("qumrand listening on %s (run dir %s, state %s)", socket_path, manager.run_dir,
             manager.store.path)  # fmt: skip
    try:
        if web is None:
            await server.serve(sockets=[sock])
        else:
            async with asyncio.TaskGroup() as group:
                group.create_task(server.serve(sockets=[sock]))
                group.create_task(web.serve(sockets=[web_sock]))
    finally:
        await manager.close()
        log.info("qumrand stopped; running VMs keep running")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(args))
    except QumranError as exc:
        print(f"qumrand: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for people; the traceback for --log-level debug
        log.debug("qumrand failed", exc_info=exc)
        print(f"qumrand: internal error: {exc!r} (--log-level debug shows where)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
