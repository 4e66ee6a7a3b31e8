"""The commands of `qumran`: each one parses nothing, makes one client call, prints.

Heavy modules are imported inside the commands that need them: the definition reader
(YAML) in ``define``, websockets in ``console``. The commands kept in modules of their own
(``imagecmd``, ``storagecmd``, ``netcmd``, ``daemonctl``) are listed here by name and
help; their module is imported when one of them is run (or asked for its arguments).
"""

from __future__ import annotations

import sys

from qumran.cli import output
from qumran.client import Client
from qumran.errors import InvalidArgument, InvalidState, Timeout

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from qumran.client.console import Replay
    from qumran.client.schema import VmInfo


class Command:
    __slots__ = ("arguments", "handler", "help", "name")

    def __init__(
        self,
        name: str,
        help: str,
        arguments: Callable[[argparse.ArgumentParser], None],
        handler: Callable[[argparse.Namespace], int],
    ) -> None:
        self.name = name
        self.help = help
        self.arguments = arguments
        self.handler = handler


class _Later:
    """A command's arguments (0) or handler (1), from its module's FUNCTIONS, the module
    imported at the first call: `qumran list` does not load `qumran image`'s code."""

    __slots__ = ("command", "module", "which")

    def __init__(self, module: str, command: str, which: int) -> None:
        self.module = module
        self.command = command
        self.which = which

    def __call__(self, arg: Any) -> Any:
        module = __import__(f"qumran.cli.{self.module}", fromlist=["FUNCTIONS"])
        return module.FUNCTIONS[self.command][self.which](arg)


def _elsewhere(module: str, name: str, help: str) -> Command:
    return Command(name, help, _Later(module, name, 0), _Later(module, name, 1))


def _client(args: argparse.Namespace) -> Client:
    return Client(args.socket)


def _name(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the VM's name")


def _nothing(p: argparse.ArgumentParser) -> None:
    pass


def _done(args: argparse.Namespace, vm: VmInfo, message: str) -> int:
    if args.json:
        output.print_json(vm)
    else:
        print(message)
    return 0


# --- listing and inspecting ---------------------------------------------------------


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="include VMs that are shut off")


def do_list(args: argparse.Namespace) -> int:
    vms = _client(args).list_vms(all=args.all)
    if args.json:
        output.print_json(vms)
    else:
        sys.stdout.write(output.vm_table(vms))
    return 0


def do_domstats(args: argparse.Namespace) -> int:
    stats = _client(args).stats(args.name)
    if args.json:
        output.print_json(stats)
    else:
        sys.stdout.write(output.domstats(args.name, stats["samples"]))
    return 0


def do_dominfo(args: argparse.Namespace) -> int:
    vm = _client(args).get_vm(args.name)
    if args.json:
        output.print_json(vm)
    else:
        sys.stdout.write(output.dominfo(vm))
    return 0


def _domstate_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("--reason", action="store_true", help="also say why it is in that state")


def do_domstate(args: argparse.Namespace) -> int:
    vm = _client(args).get_vm(args.name)
    if args.json:
        output.print_json({"state": vm["state"], "reason": vm.get("reason")})
    elif args.reason and vm.get("reason"):
        print(f"{output.state_word(vm['state'])} ({vm['reason']})")
    else:
        print(output.state_word(vm["state"]))
    return 0


def do_host(args: argparse.Namespace) -> int:
    info = _client(args).host()
    if args.json:
        output.print_json(info)
    else:
        sys.stdout.write(output.host(info))
    return 0


# --- defining -----------------------------------------------------------------------


def _define_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a definition file (.yaml, .yml, .toml or .json)")
    p.add_argument("--force", action="store_true", help="allow more memory than the host has")
    p.add_argument("--xml", action="store_true", help="FILE is libvirt domain XML (virsh's)")


def do_define(args: argparse.Namespace) -> int:
    if args.xml:
        from qumran.cli.edit import read_xml

        doc, uuid = read_xml(args.file)
        vm = _client(args).define(doc, force=args.force, uuid=uuid)
    else:
        from qumran.cli import quickdef

        definition = quickdef.read_definition(args.file)
        if definition is None:  # more YAML than the quick reader knows, TOML, JSON, a mistake
            from qumran.config.files import read_definition

            definition = read_definition(args.file)
        vm = _client(args).define(definition, force=args.force)
    return _done(args, vm, f"VM '{vm['name']}' defined from {args.file}")


def do_dumpxml(args: argparse.Namespace) -> int:
    from qumran.cli.edit import domain_xml

    client = _client(args)
    sys.stdout.write(domain_xml(client.get_vm(args.name), client.host(), args.inactive))
    return 0


def _dumpdef_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument(
        "--inactive",
        action="store_true",
        help="the definition its next start uses (differs after an edit while running)",
    )


def do_dumpdef(args: argparse.Namespace) -> int:
    from qumran.cli.edit import dump_yaml, next_definition

    vm = _client(args).get_vm(args.name)
    definition = next_definition(vm) if args.inactive else vm["definition"]
    if args.json:
        output.print_json(definition)
    else:
        sys.stdout.write(dump_yaml(definition))
    return 0


def _edit_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("--force", action="store_true", help="allow more memory than the host has")


def do_edit(args: argparse.Namespace) -> int:
    from qumran.cli.edit import Unchanged, edit

    try:
        vm = edit(_client(args), args.name, force=args.force)
    except Unchanged:
        print(f"VM '{args.name}': definition not changed")
        return 0
    message = f"VM '{args.name}' definition updated"
    if vm.get("pending_definition") is not None:
        message += (
            f" (it is {output.state_word(vm['state'])}: the change applies from its next start)"
        )
    return _done(args, vm, message)


def do_undefine(args: argparse.Namespace) -> int:
    _client(args).undefine(args.name)
    if not args.json:
        print(f"VM '{args.name}' undefined")
    return 0


def _autostart_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("--disable", action="store_true", help="do not start it with qumrand")


def do_autostart(args: argparse.Namespace) -> int:
    vm = _client(args).set_autostart(args.name, not args.disable)
    word = "unmarked" if args.disable else "marked"
    return _done(args, vm, f"VM '{args.name}' {word} as autostarted")


# --- lifecycle ------------------------------------------------------------------------


def _start_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument(
        "--console",
        action="store_true",
        help="attach to its console once started (all it printed since the start counts)",
    )
    _console_options(p)


def do_start(args: argparse.Namespace) -> int:
    if not args.console and (args.until is not None or args.timeout is not None):
        raise InvalidArgument("--until and --timeout wait on the console: add --console")
    _check_timeout(args)
    client = _client(args)
    vm = client.start(args.name)
    restored = " from its managed save" if vm.get("reason") == "restored" else ""
    _done(args, vm, f"VM '{args.name}' started{restored}")
    if args.console:
        from qumran.client.console import Replay

        # The console's recent output is this boot's: the VM was started just now.
        _attach(args, client, Replay.MATCH)
    return 0


def _lifecycle(action: str, message: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        vm = getattr(_client(args), action)(args.name)
        return _done(args, vm, message.format(name=args.name))

    return handler


# --- save and restore (native VMs; docs/vmm.md) -------------------------------------

SAVE_TIMEOUT = 330.0  # qumrand allows 300 s to write a snapshot


def _save_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("file", metavar="FILE", help="the snapshot file to write (as the VM's owner)")


def do_save(args: argparse.Namespace) -> int:
    import os.path

    file = os.path.abspath(args.file)  # qumrand has no working directory of ours
    vm = Client(args.socket, timeout=SAVE_TIMEOUT).save(args.name, file)
    return _done(args, vm, f"VM '{args.name}' saved to {file} and shut off")


def _restore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a snapshot file written by `qumran save`")


def do_restore(args: argparse.Namespace) -> int:
    import os.path

    file = os.path.abspath(args.file)
    vm = Client(args.socket, timeout=SAVE_TIMEOUT).restore(file)
    return _done(args, vm, f"VM '{vm['name']}' restored from {file}")


def do_managedsave(args: argparse.Namespace) -> int:
    vm = Client(args.socket, timeout=SAVE_TIMEOUT).managed_save(args.name)
    return _done(args, vm, f"VM '{args.name}' saved and shut off; `qumran start {args.name}` "
                 "resumes it")  # fmt: skip


def do_managedsave_remove(args: argparse.Namespace) -> int:
    vm = _client(args).managed_save_remove(args.name)
    return _done(args, vm, f"VM '{args.name}': managed save removed; its next start boots afresh")


# --- console and events ---------------------------------------------------------------


def _console_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--until",
        metavar="TEXT",
        help="leave once the guest has printed TEXT (for scripts; stdin may be a pipe)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        help="leave after SECONDS (an error when --until's TEXT has not appeared by then)",
    )


def _console_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    _console_options(p)
    p.add_argument(
        "--history",
        action="store_true",
        help="first show the guest's recent output (up to 64 KiB); --until never matches it",
    )


def _check_timeout(args: argparse.Namespace) -> None:
    if args.timeout is not None and not args.timeout >= 0:  # also refuses nan
        raise InvalidArgument("--timeout must be zero or more seconds")


def do_console(args: argparse.Namespace) -> int:
    from qumran.client.console import Replay

    _check_timeout(args)
    # --until waits for output that comes after this command: never the recent output.
    _attach(args, _client(args), Replay.SHOW if args.history else Replay.NONE)
    return 0


def _attach(args: argparse.Namespace, client: Client, replay: Replay) -> None:
    """The console session of `console` and `start --console`: an error when --until's
    text did not come (within --timeout, or before the VM stopped)."""
    from qumran.client.console import ConsoleExit, attach_console

    until = args.until.encode() if args.until else None
    sys.stdout.flush()
    why = attach_console(
        client.socket_path, args.name, until=until, timeout=args.timeout, replay=replay
    )
    if until is None:
        return
    if why is ConsoleExit.TIMEOUT:
        raise Timeout(f"{args.name}'s console did not print {args.until!r} in {args.timeout}s")
    if why is ConsoleExit.CLOSED:
        raise InvalidState(f"{args.name}'s console closed (the VM stopped) before it printed "
                           f"{args.until!r}")  # fmt: skip


def _events_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new events until Ctrl-C (with --json: one document per line)",
    )
    p.add_argument("--since", metavar="ID", type=int, help="only events after this id")


def do_events(args: argparse.Namespace) -> int:
    client = _client(args)
    events = client.events(since=args.since)
    if args.json and not args.follow:
        output.print_json(events)
        return 0
    last = args.since if args.since is not None else -1
    while True:
        for ev in events:
            if ev["id"] <= last:
                continue  # whether `since` is inclusive or not, print each event once
            last = ev["id"]
            if args.json:  # one JSON document per line while following
                import json

                sys.stdout.write(json.dumps(ev) + "\n")
            else:
                sys.stdout.write(output.event_line(ev))
        if not args.follow:
            return 0
        sys.stdout.flush()
        import time  # only here: `qumran list` does without

        time.sleep(1)
        events = client.events(since=last if last >= 0 else None)


# --- the web manager ---------------------------------------------------------------


def do_web(args: argparse.Namespace) -> int:
    from qumran.errors import NotFound

    try:
        # The token is bound to our uid, which qumrand reads from the socket (SO_PEERCRED).
        doc = _client(args).web_token()
    except NotFound:
        raise NotFound(
            "qumrand does not serve the web manager: turn it on with `enabled = true` under "
            "[web] in its settings file (/etc/qumran/qumrand.toml for root's qumrand, "
            "~/.config/qumran/qumrand.toml for your own), then `qumran daemon restart`; "
            "or start it with --web [HOST:PORT]"
        ) from None
    if args.json:
        output.print_json(doc)
    else:
        print(doc["url"])
        print("Open it within 5 minutes; it logs you in once.", file=sys.stderr)
    return 0


# --- from an image to a logged-in shell (their modules load only for these commands) ----


def _create_args(p: argparse.ArgumentParser) -> None:
    from qumran.cli import create

    create.create_args(p)


def do_create(args: argparse.Namespace) -> int:
    from qumran.cli import create

    return create.do_create(args)


def _ssh_args(p: argparse.ArgumentParser) -> None:
    from qumran.cli import guestssh

    guestssh.ssh_args(p)


def do_ssh(args: argparse.Namespace) -> int:
    from qumran.cli import guestssh

    return guestssh.do_ssh(args)


COMMANDS = [
    Command("list", "list VMs (running and paused; --all for every one)", _list_args, do_list),
    Command("create", "make a VM from an image: disk, cloud-init, start", _create_args, do_create),
    Command("ssh", "log in to a VM with ssh (its host key checked)", _ssh_args, do_ssh),
    Command("define", "define a VM from a YAML or TOML file", _define_args, do_define),
    Command("undefine", "remove a shut-off VM's definition", _name, do_undefine),
    Command("dumpdef", "print a VM's definition as YAML", _dumpdef_args, do_dumpdef),
    Command("dumpxml", "print a VM's definition as libvirt domain XML", _dumpdef_args, do_dumpxml),
    Command("edit", "edit a VM's definition in $VISUAL or $EDITOR", _edit_args, do_edit),
    Command("start", "start a VM", _start_args, do_start),
    Command(
        "shutdown",
        "ask the guest to power off (ACPI)",
        _name,
        _lifecycle("shutdown", "VM '{name}' is being shut down"),
    ),
    Command(
        "destroy",
        "stop a VM at once (kill its process)",
        _name,
        _lifecycle("destroy", "VM '{name}' destroyed"),
    ),
    Command(
        "reboot",
        "ask the guest to reboot (Ctrl-Alt-Del)",
        _name,
        _lifecycle("reboot", "VM '{name}' is being rebooted"),
    ),
    Command(
        "reset",
        "reset a VM at once (the reset button)",
        _name,
        _lifecycle("reset", "VM '{name}' was reset"),
    ),
    Command("suspend", "pause a VM's vCPUs", _name, _lifecycle("suspend", "VM '{name}' suspended")),
    Command("save", "snapshot a running native VM to FILE, then shut it off", _save_args, do_save),
    Command(
        "restore", "start a VM from the snapshot FILE it was saved to", _restore_args, do_restore
    ),
    Command(
        "managedsave",
        "save a running native VM for its next start, then shut it off",
        _name,
        do_managedsave,
    ),
    Command(
        "managedsave-remove",
        "forget a VM's managed save (its next start boots afresh)",
        _name,
        do_managedsave_remove,
    ),
    Command("resume", "resume a paused VM", _name, _lifecycle("resume", "VM '{name}' resumed")),
    Command("dominfo", "show a VM's details", _name, do_dominfo),
    Command("domstats", "show a VM's CPU, memory and I/O", _name, do_domstats),
    Command("domstate", "show a VM's state", _domstate_args, do_domstate),
    Command("autostart", "start a VM whenever qumrand starts", _autostart_args, do_autostart),
    Command(
        "console", "attach to a VM's serial console (leave with Ctrl-])", _console_args, do_console
    ),
    Command("host", "show the host and its hypervisor drivers", _nothing, do_host),
    Command("events", "show VM lifecycle events", _events_args, do_events),
    _elsewhere("imagecmd", "image", "build, list, import and remove guest images"),
    _elsewhere("storagecmd", "pool-list", "list storage pools (root: everyone's)"),
    _elsewhere("storagecmd", "pool-define", "define a directory of yours as a storage pool"),
    _elsewhere("storagecmd", "pool-info", "show a storage pool"),
    _elsewhere("storagecmd", "pool-undefine", "forget a storage pool (its files stay)"),
    _elsewhere("storagecmd", "vol-list", "list the volumes of a pool"),
    _elsewhere("storagecmd", "vol-create",
               "create a volume (qcow2 or raw; --backing for an overlay)"),
    _elsewhere("storagecmd", "vol-clone", "copy a volume"),
    _elsewhere("storagecmd", "vol-resize", "grow a volume"),
    _elsewhere("storagecmd", "vol-delete", "delete a volume"),
    _elsewhere("storagecmd", "vol-info", "show a volume"),
    _elsewhere("storagecmd", "vol-import", "copy a disk image file into a pool as a volume"),
    _elsewhere("netcmd", "net-list", "list virtual networks"),
    _elsewhere("netcmd", "net-define", "define a network from a YAML or TOML file (root)"),
    _elsewhere("netcmd", "net-undefine", "remove an inactive network's definition (root)"),
    _elsewhere("netcmd", "net-start", "start a network: its bridge, DHCP/DNS and NAT (root)"),
    _elsewhere("netcmd", "net-destroy", "stop a network (root)"),
    _elsewhere("netcmd", "net-autostart", "start a network whenever qumrand starts (root)"),
    _elsewhere("netcmd", "net-info", "show a network"),
    _elsewhere("netcmd", "net-dhcp-leases", "show a network's DHCP leases"),
    _elsewhere("netcmd", "domifaddr", "show the addresses leased to a VM's NICs"),
    _elsewhere("netcmd", "domiflist", "list a VM's NICs: TAP, network, model, MAC"),
    Command("web", "print a one-time login URL for the web manager", _nothing, do_web),
    _elsewhere("daemonctl", "daemon", "qumrand's status; stop or restart it"),
]  # fmt: skip

NAMES = frozenset(c.name for c in COMMANDS)

# Commands that make their requests, print, and are done: no files written, no threads
# left behind. The installed `qumran` ends these with os._exit (qumran.cli.main.run).
LEAN = frozenset(
    c.handler
    for c in COMMANDS
    if c.name in {
        "list", "define", "undefine", "dumpdef", "dumpxml", "start", "shutdown", "destroy",
        "reboot", "reset", "suspend", "resume", "dominfo", "domstats", "domstate",
        "autostart", "host", "events",
    }
)  # fmt: skip
