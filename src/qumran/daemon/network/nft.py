"""qumrand's firewall rules: one nftables table, ``inet qumran``, and nothing outside it.

The table is generated whole from the networks that are running and loaded with
``nft -f -`` as one transaction: "create the table if missing, delete it, create it
with these chains" is atomic in the kernel, so no packet ever sees half a ruleset, and
no rule handle has to be remembered. Incremental ``nft add rule`` calls would need the
handles to remove exactly their own rules later, and a crash between two calls would
leave half a network's rules. Regenerating costs one netlink batch per start or stop
of a network; NAT state lives in conntrack, not in the rules, so flows carry on.
When no network needs rules the table is deleted.

A restarted qumrand compares the table it finds (``nft -j list table``, handles left
out) with the listing it saved after its last load; equal, it touches nothing.

Rules, per bridge B with subnet S (forward hook, priority filter):
1. replies to a NAT network's guests (``oifname B ip daddr S ct state
   established,related``) and traffic within one bridge are accepted;
2. anything else into B is dropped (no unsolicited inbound; no network reaches another);
3. a NAT network's guests may go out (``iifname B ip saddr S``);
4. anything else out of B is dropped (an isolated network, or a spoofed source).
Postrouting (priority srcnat): S to anywhere but S, multicast 224.0.0.0/24 and broadcast
is masqueraded to the outgoing interface's address. Our accept does not override a drop
in another table (docs/networks.md: a host firewall must let the bridge through).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

FAMILY = "inet"
TABLE = "qumran"
NFT_TIMEOUT = 30.0


class NftFailure(Exception):
    """nft refused a ruleset or could not be run; the message is nft's own."""


@dataclass(frozen=True)
class Rules:
    """What one running network needs from the firewall."""

    network: str
    bridge: str
    subnet: IPv4Network
    nat: bool


def _q(text: str) -> str:
    # Names are checked (letters, digits, '_', '.', '-'); quoting keeps nft from taking
    # a name for a keyword.
    return f'"{text}"'


def ruleset(nets: Sequence[Rules]) -> str:
    """The whole ``inet qumran`` table for ``nets``, as an ``nft -f`` script (empty
    ``nets``: a script that removes the table)."""
    head = f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
    if not nets:
        return head
    fwd: list[str] = []
    post: list[str] = []
    for n in nets:
        b, s, c = _q(n.bridge), n.subnet, f"comment {_q('network ' + n.network)}"
        if n.nat:
            fwd.append(f"oifname {b} ip daddr {s} ct state established,related accept {c}")
        fwd.append(f"iifname {b} oifname {b} accept {c}")
    fwd += [f"oifname {_q(n.bridge)} drop comment {_q('network ' + n.network)}" for n in nets]
    for n in nets:
        c = f"comment {_q('network ' + n.network)}"
        if n.nat:
            fwd.append(f"iifname {_q(n.bridge)} ip saddr {n.subnet} accept {c}")
            post += [
                f"ip saddr {n.subnet} ip daddr 224.0.0.0/24 return {c}",
                f"ip saddr {n.subnet} ip daddr 255.255.255.255 return {c}",
                f"ip saddr {n.subnet} ip daddr != {n.subnet} masquerade {c}",
            ]
        fwd.append(f"iifname {_q(n.bridge)} drop {c}")
    lines = [
        f"table {FAMILY} {TABLE} {{",
        '    comment "qumrand virtual networks: made and removed by qumrand, do not edit"',
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        *(f"        {r}" for r in fwd),
        "    }",
    ]
    if post:
        lines += [
            "    chain postrouting {",
            "        type nat hook postrouting priority srcnat; policy accept;",
            *(f"        {r}" for r in post),
            "    }",
        ]
    lines.append("}")
    return head + "\n".join(lines) + "\n"


def _nft() -> str:
    found = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if shutil.which(p)), None
    )
    if found is None:
        raise NftFailure("nft is not installed (Debian: apt install nftables)")
    return found


def _run(args: list[str], script: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([_nft(), *args], input=script, capture_output=True, text=True,
                              timeout=NFT_TIMEOUT, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftFailure(f"cannot run nft: {exc}") from None


def load(script: str) -> None:
    done = _run(["-f", "-"], script)
    if done.returncode != 0:
        raise NftFailure(done.stderr.strip() or f"nft -f exited with {done.returncode}")


def listing() -> list[dict[str, Any]] | None:
    """The table as nft lists it, without handles (they change on every load), or None
    when there is no such table."""
    done = _run(["-j", "list", "table", FAMILY, TABLE])
    if done.returncode != 0:
        return None
    try:
        items = json.loads(done.stdout)["nftables"]
    except (ValueError, KeyError, TypeError):
        return None
    return [_without_handles(i) for i in items if "metainfo" not in i]


def _without_handles(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: _without_handles(v) for k, v in item.items() if k != "handle"}
    if isinstance(item, list):
        return [_without_handles(v) for v in item]
    return item
