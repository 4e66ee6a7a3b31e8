"""qumran-vmm's command line: a table of options and a small parser for it.

Not argparse: with gettext, locale and warnings it adds about 0.5 MiB to the resident
memory of every VM process (a twentieth of what the whole VMM may take next to QEMU,
BENCHMARKS.md), for a fixed list of ``--option VALUE`` flags that this table covers.
Accepted forms: ``--opt VALUE``, ``--opt=VALUE``, and bare flags; usage errors exit 2.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

DEFAULT_CMDLINE = "console=ttyS0 panic=-1"
USAGE_EXIT = 2  # as argparse and most tools
_UNITS = {"": 20, "K": 10, "M": 20, "G": 30, "T": 40}  # a bare number is MiB, as in QEMU


class UsageError(ValueError):
    """Bad command line: the message says which option and why."""


class HelpRequested(Exception):
    """``-h`` or ``--help`` was given."""


def parse_memory(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if m is None:
        raise UsageError(f"invalid memory size {text!r} (e.g. 256M, 1G)")
    return int(m.group(1)) << _UNITS[m.group(2).upper()]


def _vcpu_count(text: str) -> int:
    if not text.isdigit():
        raise UsageError(f"invalid vCPU count {text!r}")
    return int(text)


class Option:
    """One ``--flag``: a value option (``metavar`` set) or a bare switch (``metavar=None``)."""

    __slots__ = ("convert", "flag", "help", "metavar", "repeat")

    def __init__(
        self,
        flag: str,
        metavar: str | None,
        help: str,
        convert: Callable[[str], object] = str,
        repeat: bool = False,
    ) -> None:
        self.flag = flag
        self.metavar = metavar
        self.help = help
        self.convert = convert
        self.repeat = repeat

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


OPTIONS = (
    Option("--name", "NAME", "VM name (also the process name); required"),
    Option("--kernel", "PATH", "bzImage to boot; required"),
    Option("--initrd", "PATH", "initial ramdisk"),
    Option("--cmdline", "TEXT", f'kernel command line (default "{DEFAULT_CMDLINE}")'),
    Option("--memory", "SIZE", "guest RAM: 256M (default), 1G; a bare number is MiB", parse_memory),
    Option("--vcpus", "N", "virtual CPUs (1)", _vcpu_count),
    Option("--console", "WHERE", "serial console: stdio, socket:PATH|fd=N or none (stdio)"),
    Option("--console-log", "PATH|fd=N", "append the serial console's output to PATH"),
    Option("--control", "PATH|fd=N", "the JSON control socket (fd=N: inherited, listening)"),
    Option("--force-kvm", None, "skip the vmx/svm host check"),
    Option(
        "--disk",
        "PATH[,ro]|fd=N[,ro]|vhost-user=SOCKET",
        "raw disk image (by path, or inherited open), or a vhost-user-blk back end, as"
        " virtio-blk (repeatable)",
        repeat=True,
    ),
    Option(
        "--net",
        "tap=NAME|fd=N[,mac=MAC][,vhost=on|off][,vhostfd=N]",
        "virtio-net on a TAP (repeatable); vhost=on moves frames in the host kernel (off);"
        " or passt[,mac=MAC][,forward=tcp:127.0.0.1:2222-:22]...: user-mode, no privileges",
        repeat=True,
    ),
    Option("--rng", None, "virtio-rng fed from /dev/urandom"),
    Option("--virtio-console", "socket:PATH", "hvc0 as a second console"),
    Option("--restore", "PATH", "resume the guest saved in snapshot PATH (control: snapshot)"),
    Option("--log-level", "LEVEL", "DEBUG, INFO, WARNING (default, or $QUMRAN_VMM_LOG), ERROR"),
    Option("--kvm-device", "PATH", ""),  # tests only: another /dev/kvm; not in --help
)
_BY_FLAG = {o.flag: o for o in OPTIONS}
REQUIRED = ("--name", "--kernel")
FROM_SNAPSHOT = {"--kernel", "--initrd", "--cmdline", "--memory", "--vcpus", "--disk", "--net",
                 "--rng", "--virtio-console"}  # fmt: skip


class VmmArgs:
    """The parsed command line, with every default filled in."""

    def __init__(self) -> None:
        self.name = ""
        self.kernel = ""
        self.initrd: str | None = None
        self.cmdline = DEFAULT_CMDLINE
        self.memory = 256 << 20
        self.vcpus = 1
        self.console = "stdio"
        self.console_log: str | None = None
        self.control: str | None = None
        self.force_kvm = False
        self.disk: list[str] = []
        self.net: list[str] = []
        self.rng = False
        self.virtio_console: str | None = None
        self.log_level = os.environ.get("QUMRAN_VMM_LOG", "WARNING")
        self.kvm_device = "/dev/kvm"
        self.restore: str | None = None


def parse(argv: list[str]) -> VmmArgs:
    """Parse ``argv`` (without the program name); :class:`UsageError` on bad input."""
    args = VmmArgs()
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag in ("-h", "--help"):
            raise HelpRequested
        option = _BY_FLAG.get(flag)
        if option is None:
            raise UsageError(f"unrecognized argument {argv[i]!r}")
        i += 1
        if option.metavar is None:
            if eq:
                raise UsageError(f"{flag} takes no value")
            setattr(args, option.dest, True)
            seen.add(flag)
            continue
        if not eq:
            if i == len(argv):
                raise UsageError(f"{flag} needs a value ({option.metavar})")
            value = argv[i]
            i += 1
        if flag in seen and not option.repeat:
            raise UsageError(f"{flag} given twice")
        seen.add(flag)
        try:
            converted = option.convert(value)
        except UsageError as exc:
            raise UsageError(f"{flag}: {exc}") from None
        if option.repeat:
            getattr(args, option.dest).append(converted)
        else:
            setattr(args, option.dest, converted)
    if "--restore" in seen:
        given = sorted(seen & FROM_SNAPSHOT)
        if given:
            raise UsageError(f"{', '.join(given)}: the machine comes from the snapshot "
                             "with --restore")  # fmt: skip
        return args
    missing = [flag for flag in REQUIRED if flag not in seen]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    return args


def usage() -> str:
    lines = ["usage: qumran-vmm --name NAME --kernel PATH [options]", "",
             "Run one VM on /dev/kvm.", "", "options:"]  # fmt: skip
    for o in OPTIONS:
        if o.help:
            head = f"  {o.flag} {o.metavar}" if o.metavar else f"  {o.flag}"
            lines.append(f"{head:<34} {o.help}" if len(head) < 34 else f"{head}\n{'':34} {o.help}")
    return "\n".join(lines) + "\n"


def parse_or_exit(argv: list[str]) -> VmmArgs:
    """:func:`parse`, with ``-h``/``--help`` and usage errors handled as a CLI does."""
    try:
        return parse(argv)
    except HelpRequested:
        sys.stdout.write(usage())
        raise SystemExit(0) from None
    except UsageError as exc:
        sys.stderr.write(f"usage: qumran-vmm --name NAME --kernel PATH [options]\n"
                         f"qumran-vmm: error: {exc}\n")  # fmt: skip
        raise SystemExit(USAGE_EXIT) from None
