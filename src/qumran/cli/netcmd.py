"""`qumran net-*`: virtual networks, kept by qumrand (docs/networks.md).

Thin, as every command: parse, one client call, print (a table, or ``--json``).
"""

from __future__ import annotations

import sys

from qumran.cli import output
from qumran.client import Client

TYPE_CHECKING = False  # typing and argparse stay out of the CLI's fast path (cli/quick.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from qumran.client.schema import NetworkInfo


def _client(args: argparse.Namespace) -> Client:
    return Client(args.socket)


def _nothing(p: argparse.ArgumentParser) -> None:
    pass


def _name(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NETWORK", help="the network's name")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def do_net_list(args: argparse.Namespace) -> int:
    nets = _client(args).networks()
    if args.json:
        output.print_json(nets)
        return 0
    rows = [
        [n["name"], n["type"], "active" if n["active"] else "inactive", _yes(n["autostart"]),
         _yes(n["shared"]), n["bridge"] or "-", n["address"] or "-"]
        for n in nets
    ]  # fmt: skip
    headers = ["Name", "Type", "State", "Autostart", "Shared", "Bridge", "Address"]
    sys.stdout.write(output.table(headers, rows))
    return 0


def _define_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the network's definition (YAML or TOML)")


def do_net_define(args: argparse.Namespace) -> int:
    from qumran.config.files import read_definition

    net = _client(args).define_network(read_definition(args.file))
    return _done(args, net, f"network '{net['name']}' defined from {args.file}")


def do_net_undefine(args: argparse.Namespace) -> int:
    _client(args).undefine_network(args.name)
    if args.json:
        output.print_json({"name": args.name, "undefined": True})
    else:
        print(f"network '{args.name}' undefined")
    return 0


def do_net_start(args: argparse.Namespace) -> int:
    net = _client(args).start_network(args.name)
    return _done(args, net, f"network '{net['name']}' started")


def _destroy_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("--force", action="store_true", help="stop it even with VMs attached")


def do_net_destroy(args: argparse.Namespace) -> int:
    net = _client(args).destroy_network(args.name, force=args.force)
    return _done(args, net, f"network '{net['name']}' destroyed")


def _autostart_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("--disable", action="store_true", help="do not start it with qumrand")


def do_net_autostart(args: argparse.Namespace) -> int:
    net = _client(args).set_network_autostart(args.name, not args.disable)
    state = "marked as autostarted" if net["autostart"] else "unmarked as autostarted"
    return _done(args, net, f"network '{net['name']}' {state}")


def do_net_info(args: argparse.Namespace) -> int:
    net = _client(args).network(args.name)
    if args.json:
        output.print_json(net)
        return 0
    pairs = [
        ("Name", net["name"]),
        ("Type", net["type"]),
        ("Active", _yes(net["active"])),
        ("Autostart", _yes(net["autostart"])),
        ("Shared", _yes(net["shared"])),
        ("Bridge", net["bridge"] or "-"),
        ("Address", net["address"] or "-"),
        ("DHCP", net["dhcp"] or "-"),
        ("Domain", net["domain"] or "-"),
        ("DNS forward", _yes(net["dns_forward"])),
    ]
    if net["dnsmasq_pid"] is not None:
        pairs.append(("dnsmasq", f"pid {net['dnsmasq_pid']}"))
    sys.stdout.write(output.key_values(pairs))
    return 0


def do_net_dhcp_leases(args: argparse.Namespace) -> int:
    leases = _client(args).network_leases(args.name)
    if args.json:
        output.print_json(leases)
        return 0
    import time

    rows = [
        [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x["expires"])) if x["expires"]
         else "never", x["mac"], x["ip"], x["hostname"] or "-", x["client_id"] or "-"]
        for x in leases
    ]  # fmt: skip
    headers = ["Expiry time", "MAC address", "IP address", "Hostname", "Client ID"]
    sys.stdout.write(output.table(headers, rows))
    return 0


def _done(args: argparse.Namespace, net: NetworkInfo, message: str) -> int:
    if args.json:
        output.print_json(net)
    else:
        print(message)
    return 0


# (name, help, arguments, handler): made into Commands by qumran.cli.commands.
COMMANDS: list[
    tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = [
    ("net-list", "list virtual networks", _nothing, do_net_list),
    ("net-define", "define a network from a YAML or TOML file (root)", _define_args,
     do_net_define),
    ("net-undefine", "remove an inactive network's definition (root)", _name, do_net_undefine),
    ("net-start", "start a network: its bridge, DHCP/DNS and NAT (root)", _name, do_net_start),
    ("net-destroy", "stop a network (root)", _destroy_args, do_net_destroy),
    ("net-autostart", "start a network whenever qumrand starts (root)", _autostart_args,
     do_net_autostart),
    ("net-info", "show a network", _name, do_net_info),
    ("net-dhcp-leases", "show a network's DHCP leases", _name, do_net_dhcp_leases),
]  # fmt: skip
