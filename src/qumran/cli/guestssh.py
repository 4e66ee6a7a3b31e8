"""`qumran ssh NAME [-- COMMAND]`: the system ``ssh`` to a guest, its host key checked.

The guest is reached through its user-mode NIC's forward of guest port 22, or else at the
address a network's dnsmasq leased to one of its NICs (docs/networks.md), port 22. The
host key is the one cloud-init printed on the VM's console (qumran.cli.hostkeys), learnt
from the console the first time and kept; ``ssh`` runs with strict checking against it,
so a different key is refused, never accepted. ``ssh`` replaces this process: its
terminal handling and exit status are the user's, as if they had typed the command
themselves.
"""

from __future__ import annotations

import os
import shutil
import sys

from qumran.cli import hostkeys
from qumran.client import Client
from qumran.errors import InvalidArgument, InvalidState, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from qumran.client.schema import InterfaceInfo, VmInfo

SSH_PORT = 22


def ssh_args(p: argparse.ArgumentParser) -> None:
    import argparse

    p.add_argument("name", metavar="NAME", help="the VM's name")
    p.add_argument(
        "-l", "--user", metavar="USER",
        help="log in as USER (default: the first user of the VM's cloud_init section)",
    )  # fmt: skip
    p.add_argument("-i", "--identity", metavar="FILE", help="the private key ssh uses")
    p.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPTION",
        help="an ssh option (repeatable), e.g. -o ConnectTimeout=5; not the host-key ones",
    )  # fmt: skip
    p.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
        help="run COMMAND in the guest instead of a login shell",
    )  # fmt: skip


def do_ssh(args: argparse.Namespace) -> int:
    client = Client(args.socket)
    vm = client.get_vm(args.name)
    if vm["state"] not in ("running", "paused"):
        raise InvalidState(
            f"VM {args.name!r} is {vm['state']}; start it first (`qumran start {args.name}`)"
        )
    host, port = ssh_target(vm, lambda: client.interfaces(args.name))
    alias = learn_host_keys(client, vm)
    binary = shutil.which("ssh")
    if binary is None:
        raise NotFound("ssh is not installed here (Debian: `apt install openssh-client`)")
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    user = args.user or guest_user(vm)
    argv = [
        "ssh",
        "-p", str(port),
        "-o", f"HostKeyAlias={alias}",
        "-o", f"UserKnownHostsFile={hostkeys.known_hosts_file()}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        *(["-i", args.identity] if args.identity else []),
        *(word for option in args.options for word in ("-o", checked_option(option))),
        *(["-l", user] if user else []),
        host,
        *command,
    ]  # fmt: skip
    sys.stdout.flush()
    os.execv(binary, argv)
    return 255  # not reached


# What qumran ssh sets itself: the host-key check is its point, not the caller's to undo.
_OWN_OPTIONS = ("hostkeyalias", "userknownhostsfile", "globalknownhostsfile",
                "stricthostkeychecking", "updatehostkeys")  # fmt: skip


def checked_option(option: str) -> str:
    """An ``-o`` option for ssh, unless it is one of the host-key options qumran sets."""
    name = option.replace("=", " ").split(maxsplit=1)[0].lower() if option.strip() else ""
    if name in _OWN_OPTIONS:
        raise InvalidArgument(
            f"-o {option}: qumran ssh sets the host-key options itself (it checks the guest "
            "against the key qumrand gave it); run ssh yourself to change them"
        )
    return option


def ssh_target(
    vm: VmInfo, interfaces: Callable[[], list[InterfaceInfo]] | None = None
) -> tuple[str, int]:
    """The host address and port that lead to the guest's port 22: a user NIC's forward
    of it, else the address leased to a NIC on a network (``interfaces``: the VM's NICs,
    asked only then), port 22."""
    nics = vm["definition"].get("nics", [])
    for nic in nics:
        for rule in nic.get("forward", []):
            proto, _, rest = rule.partition(":")
            host_part, _, guest_part = rest.partition("-")
            address, _, port = host_part.rpartition(":")
            if proto == "tcp" and guest_part.rpartition(":")[2] == str(SSH_PORT):
                return (address if address not in ("", "0.0.0.0") else "127.0.0.1"), int(port)
    name = vm["name"]
    if interfaces is not None and any(nic.get("network") for nic in nics):
        for row in interfaces():
            if row["ip"]:
                return row["ip"], SSH_PORT
        raise InvalidState(
            f"VM {name!r} has no leased address yet: its guest has not asked the network's "
            f"DHCP for one (see `qumran domifaddr {name}`)"
        )
    raise InvalidArgument(
        f"VM {name!r} has no forward to its SSH port: give a user NIC "
        f'`forward: ["tcp:127.0.0.1:2222-:22"]` (`qumran edit {name}`, then restart it), '
        "or make VMs with `qumran create`, which does"
    )


def guest_user(vm: VmInfo) -> str | None:
    users = (vm["definition"].get("cloud_init") or {}).get("users") or []
    return str(users[0]["name"]) if users else None


def learn_host_keys(client: Client, vm: VmInfo, output: bytes | None = None) -> str:
    """The VM's known_hosts alias, with its keys: those qumrand gave the guest, else those
    learnt from ``output`` (or from the console's recent output) the first time."""
    alias = hostkeys.alias(vm["name"], vm["uuid"])
    given = vm.get("ssh_host_keys") or []
    if given:
        if sorted(hostkeys.keys_of(alias)) != sorted(given):
            hostkeys.save(alias, given)
        return alias
    if hostkeys.known(alias):
        return alias
    if output is None:
        from qumran.client.console import recent_output

        output = recent_output(client.socket_path, vm["name"])
    keys = hostkeys.from_console(output)
    if not keys:
        raise InvalidState(
            f"the SSH host keys of {vm['name']!r} are not on its console yet: cloud-init "
            f"prints them once, late in the first boot (watch `qumran console {vm['name']}`, "
            f"or make VMs with `qumran create --wait`); qumran ssh does not trust a key it "
            "has not seen there"
        )
    path = hostkeys.save(alias, keys)
    print(f"{vm['name']}: host keys from its console saved in {path}", file=sys.stderr)
    return alias
