"""`qumran`: the command-line tool (virsh's role). Thin: parse, one client call, print.

Exit status: 0 on success; 1 with one ``error: ...`` line on stderr when the request
fails; 2 for a command-line mistake; 130 on Ctrl-C. Start-up time matters: nothing
heavy (pydantic, yaml, websockets, asyncio, http.client) is imported on the common path;
the commands that need more import it themselves (see ``qumran.cli.commands``).
"""

from __future__ import annotations

import os
import sys

from qumran.cli import commands, quick
from qumran.errors import QumranError

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    import argparse
    from typing import Any, NoReturn

_DESCRIPTION = "Manage Qumran virtual machines (through qumrand)."
_JSON = "print the API's JSON (for scripts)"
_SOCKET = "qumrand's socket (default: $QUMRAN_SOCKET, else the per-user or system one)"


def _parser_class() -> type[argparse.ArgumentParser]:
    # argparse only when the quick reader (qumran.cli.quick) cannot read the line.
    import argparse

    class _Formatter(argparse.HelpFormatter):
        """argparse's formatter, minus its `import shutil` (2 ms of start-up) for the width."""

        def __init__(self, prog: str) -> None:
            try:
                width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
            except (ValueError, OSError):
                width = 80
            super().__init__(prog, width=max(width - 2, 40))

    class _Parser(argparse.ArgumentParser):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(formatter_class=_Formatter, **kwargs)

        def error(self, message: str) -> NoReturn:
            self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

    return _Parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's subparser is built (start-up)."""
    import argparse

    _Parser = _parser_class()
    # Global options are accepted before or after the command: the subcommands get them
    # too, with SUPPRESS so an absent option does not undo one given before the command.
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=_JSON)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help=_SOCKET)
    parser = _Parser(prog="qumran", description=_DESCRIPTION)
    parser.add_argument("--json", action="store_true", help=_JSON)
    parser.add_argument("--socket", metavar="PATH", help=_SOCKET)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in commands.COMMANDS:
        if command is not None and spec.name != command:
            continue
        p = sub.add_parser(spec.name, help=spec.help, description=spec.help, parents=[common])
        spec.arguments(p)
        p.set_defaults(handler=spec.handler)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command named in ``argv``, if it is one we know (else None: build them all)."""
    words = iter(argv)
    for word in words:
        if word == "--socket":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in commands.NAMES else None
    return None


def main(argv: list[str] | None = None) -> int:
    return _main(argv)[0]


def run() -> NoReturn:
    """The installed `qumran` command (``bin/qumran``): :func:`main`, then exit.

    Python's orderly exit tears the interpreter down module by module: ~1 ms of a
    ~10 ms command, freeing memory the kernel frees anyway. After the commands in
    ``commands.LEAN`` (one request, output to stdout/stderr, no files, no threads) the
    process flushes its output and leaves with ``os._exit``, unless something registered
    an exit action after all (an atexit callback, a thread still running).
    """
    code, handler = _main(None)
    if handler in commands.LEAN:
        code = _exit_now(code)
    sys.exit(code)


def _exit_now(code: int) -> int:
    """Flush the output and leave at once; return (the status) only where that would skip
    something an orderly exit does."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _reader_gone()
    except OSError:
        return code  # the orderly exit reports it
    sys.stderr.flush()
    import atexit

    threading = sys.modules.get("threading")
    callbacks = getattr(atexit, "_ncallbacks", lambda: 1)()  # unknown: assume some
    if callbacks or (threading is not None and threading.active_count() > 1):
        return code
    os._exit(code)


def _main(argv: list[str] | None) -> tuple[int, object]:
    """The exit status, and the handler of the command that ran."""
    argv = sys.argv[1:] if argv is None else argv
    args: Any = quick.parse(argv, commands.COMMANDS)
    if args is None:
        args = build_parser(_command_in(argv)).parse_args(argv)
    return _handle(args), args.handler


def _handle(args: Any) -> int:
    try:
        return int(args.handler(args))
    except QumranError as exc:
        return _fail(exc.message)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except Exception as exc:
        if os.environ.get("QUMRAN_DEBUG"):
            raise
        return _fail(
            f"internal error in qumran: {type(exc).__name__}: {exc} (QUMRAN_DEBUG=1 "
            "shows the traceback)"
        )


def _reader_gone() -> int:
    # The reader went away (`qumran list | head -1`): stop quietly, like a shell tool.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def _fail(message: str) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
