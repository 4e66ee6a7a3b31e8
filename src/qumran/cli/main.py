"""`qumran`: the command-line tool (virsh's role). Thin: parse, one client call, print.

Exit status: 0 on success; 1 with one ``error: ...`` line on stderr when the request
fails; 2 for a command-line mistake; 130 on Ctrl-C. Start-up time matters: nothing
heavy (pydantic, yaml, websockets, asyncio, http.client) is imported on the common path;
the commands that need more import it themselves (see ``qumran.cli.commands``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from qumran.cli import commands
from qumran.errors import QumranError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before or after the command: the subcommands get them
    # too, with SUPPRESS so an absent option does not undo one given before the command.
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS)
    parser = _Parser(prog="qumran", description="Manage Qumran virtual machines (via qumrand).")
    parser.add_argument("--json", action="store_true", help="print the API's JSON (for scripts)")
    parser.add_argument(
        "--socket", metavar="PATH", help="qumrand's socket (default: $QUMRAN_SOCKET or per-user)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in commands.COMMANDS:
        p = sub.add_parser(spec.name, help=spec.help, description=spec.help, parents=[common])
        spec.arguments(p)
        p.set_defaults(handler=spec.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except QumranError as exc:
        return _fail(exc.message)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`qumran list | head -1`): stop quietly, like a shell tool.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:
        if os.environ.get("QUMRAN_DEBUG"):
            raise
        return _fail(
            f"internal error in qumran: {type(exc).__name__}: {exc} (QUMRAN_DEBUG=1 "
            "shows the traceback)"
        )


def _fail(message: str) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"error: {message}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
