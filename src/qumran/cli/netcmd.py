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


def _undefine_args(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("--force", action="store_true",
                   help="remove it even while defined VMs have a NIC on it")  # fmt: skip


def do_net_undefine(args: argparse.Namespace) -> int:
    _client(args).undefine_network(args.name, force=args.force)
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


def _vm(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the VM's name")


def _domifaddr_args(p: argparse.ArgumentParser) -> None:
    _vm(p)
    p.add_argument(
        "--ip", action="store_true", help="print just the first address: ssh debian@$(qumran "
        "domifaddr web1 --ip)",
    )  # fmt: skip


def do_domifaddr(args: argparse.Namespace) -> int:
    """The addresses the networks' dnsmasq leased to the VM's NICs (virsh domifaddr)."""
    rows = [r for r in _client(args).interfaces(args.name) if r["network"] is not None]
    if args.ip:
        found = [r["ip"] for r in rows if r["ip"]]
        if not found:
            from qumran.errors import NotFound

            raise NotFound(
                f"VM '{args.name}' has no leased address yet (is it running, with a NIC on a "
                "network with DHCP, and has its guest asked for one?)"
            )
        print(found[0])
        return 0
    if args.json:
        output.print_json(rows)
        return 0
    table = [[r["interface"] or "-", r["mac"], r["network"] or "-", r["ip"] or "-",
              r["hostname"] or "-"] for r in rows]  # fmt: skip
    headers = ["Interface", "MAC address", "Network", "Address", "Hostname"]
    sys.stdout.write(output.table(headers, table))
    return 0


def do_domiflist(args: argparse.Namespace) -> int:
    """The VM's NICs: TAP, type, network, model, MAC (virsh domiflist)."""
    rows = _client(args).interfaces(args.name)
    if args.json:
        output.print_json(rows)
        return 0
    table = [[r["interface"] or "-", r["type"], r["network"] or "-", r["model"], r["mac"]]
             for r in rows]  # fmt: skip
    headers = ["Interface", "Type", "Source", "Model", "MAC"]
    sys.stdout.write(output.table(headers, table))
    return 0


def _done(args: argparse.Namespace, net: NetworkInfo, message: str) -> int:
    if args.json:
        output.print_json(net)
    else:
        print(message)
    return 0


# Each command's (arguments, handler), by name; qumran.cli.commands has their help and
# imports this module only when one of them runs.
FUNCTIONS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "net-list": (_nothing, do_net_list),
    "net-define": (_define_args, do_net_define),
    "net-undefine": (_undefine_args, do_net_undefine),
    "net-start": (_name, do_net_start),
    "net-destroy": (_destroy_args, do_net_destroy),
    "net-autostart": (_autostart_args, do_net_autostart),
    "net-info": (_name, do_net_info),
    "net-dhcp-leases": (_name, do_net_dhcp_leases),
    "domifaddr": (_domifaddr_args, do_domifaddr),
    "domiflist": (_vm, do_domiflist),
}
