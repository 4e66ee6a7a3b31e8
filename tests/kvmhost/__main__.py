"""Command line of the KVM test host (see the package docstring)."""

from __future__ import annotations

import argparse
import sys

from . import tier
from .image import build_image
from .runner import run_in_kvmhost, stream_to_stdout


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tier"]:  # its own command line: files, then -- and pytest's
        return tier.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m tests.kvmhost")
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="prepare the cached kernel and initramfs")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    run = sub.add_parser("run", help="run a command inside the KVM test host")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    run.add_argument("--cwd", help="working directory inside (default: the current one)")
    run.add_argument("--memory", type=int, default=2048, help="guest RAM in MiB")
    run.add_argument("--cpus", type=int, default=1, help="its CPUs (default 1: see README)")
    run.add_argument(
        "--share", action="append", default=[], help="host directory writable inside (repeat)"
    )
    run.add_argument("--env", action="append", default=[], help="KEY=VALUE to set inside")
    run.add_argument("--kernel-log", help="keep the test host's kernel log in this file")
    run.add_argument(
        "--kvm-trace", help="trace KVM; a nested guest's triple fault saves the trace here"
    )
    run.add_argument("--idle-timeout", type=float, help="seconds without output: frozen")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    if args.action == "build":
        image = build_image(force=args.force)
        print(f"{image.kernel}\n{image.initrd}")
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("run: missing the command (after --)")
    env = dict(item.split("=", 1) for item in args.env)
    try:
        status, _ = run_in_kvmhost(
            cmd,
            timeout=args.timeout,
            cwd=args.cwd,
            env=env,
            shares=args.share,
            memory_mib=args.memory,
            cpus=args.cpus,
            tty=sys.stdout.isatty(),
            on_output=stream_to_stdout,
            kernel_log=args.kernel_log,
            kvm_trace=args.kvm_trace,
            idle_timeout=args.idle_timeout,
        )
    except KeyboardInterrupt:
        return 130  # the guest is already killed by the runner
    return status


if __name__ == "__main__":
    sys.exit(main())
