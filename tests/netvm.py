"""A qumrand inside a network namespace of the test's own, for tests of VMs' NICs on its
networks (tests/netns.py makes the namespaces; nothing is made in the host's own).

The daemon namespace has an uplink veth into an "outside" namespace, the stand-in for the
world; the daemon's networks, TAPs, dnsmasq and rules all live in the daemon namespace.
The guests are the busybox demo guest, driven over their consoles (:func:`sh`); udhcpc
there is given a small script typed in (the demo image has none).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemon_harness import DAEMON_START_TIMEOUT, Daemon, remove_tmpdir, short_tmpdir
from netns import Netns, namespaces, veth
from qumran.images.demo import READY_LINE, DemoImage

LAN = {
    "name": "lan", "type": "nat", "domain": "lan.test", "dns": {"forward": False},
    "shared": True,
    "ipv4": {"address": "192.168.151.1/24",
             "dhcp": {"start": "192.168.151.100", "end": "192.168.151.120"}},
}  # fmt: skip
ISO = {
    "name": "iso", "type": "isolated", "dns": {"forward": False},
    "ipv4": {"address": "10.78.0.1/24", "dhcp": {"start": "10.78.0.10", "end": "10.78.0.20"}},
}  # fmt: skip
OUTSIDE = "10.98.0.2"
UPLINK = "10.98.0.1"


class NetDaemon:
    UPLINK, OUTSIDE = UPLINK, OUTSIDE  # the daemon namespace's uplink and the world's end

    def __init__(self, root: Path, ns: Netns, outside: Netns, driver: str,
                 start_timeout: float = DAEMON_START_TIMEOUT) -> None:  # fmt: skip
        self.ns, self.outside, self.root = ns, outside, root
        self.daemon = Daemon(root, driver=driver, netns=ns.name, start_timeout=start_timeout)
        veth(ns, "up0", outside, "eth0")
        ns.ip("addr", "add", f"{self.UPLINK}/24", "dev", "up0")
        outside.ip("addr", "add", f"{self.OUTSIDE}/24", "dev", "eth0")
        ns.ip("route", "add", "default", "via", self.OUTSIDE)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.daemon.call(method, path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def refused(self, method: str, path: str, status: int, **kwargs: Any) -> str:
        response = self.daemon.call(method, path, **kwargs)
        assert response.status_code == status, response.text
        message: str = response.json()["error"]["message"]
        assert "\n" not in message and "Traceback" not in message
        return message

    def network(self, doc: dict[str, Any], start: bool = True) -> None:
        self.call("POST", "/v1/networks", json=doc)
        if start:
            self.call("POST", f"/v1/networks/{doc['name']}/start")

    def taps(self) -> dict[str, dict[str, Any]]:
        """The TAPs in the daemon's namespace, by name."""
        return {n: link for n, link in self.ns.links().items() if n.startswith("qt")}

    def tap(self, name: str) -> dict[str, Any]:
        out = self.ns.ip("-j", "-d", "link", "show", "dev", name)
        link: dict[str, Any] = json.loads(out)[0]
        return link


@contextlib.contextmanager
def net_daemon(driver: str, start_timeout: float = DAEMON_START_TIMEOUT
               ) -> Iterator[NetDaemon]:  # fmt: skip
    root = short_tmpdir()
    with namespaces("d", "o") as (ns, outside):
        nd = NetDaemon(root, ns, outside, driver, start_timeout)
        nd.daemon.start()
        try:
            yield nd
        finally:
            nd.daemon.cleanup()
            remove_tmpdir(root)


def uid_of_link(link: dict[str, Any]) -> int | None:
    info = link.get("linkinfo", {}).get("info_data", {})
    user = info.get("user")
    if user is None:
        return None
    return int(user) if str(user).isdigit() else _uid(str(user))


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def vm_doc(name: str, kernel: str = "/bin/true", **extra: Any) -> dict[str, Any]:
    return {"name": name, "memory": 64, "boot": {"kernel": kernel}, **extra}


# --- demo guests on the networks, driven over their consoles ---------------------------

QUMRAN = str(Path(sys.executable).parent / "qumran")
BOOT_TIMEOUT = 120
_marks = itertools.count(100)

# udhcpc's script: the lease's address and default route (busybox passes mask as bits).
DHCP_SCRIPT = (
    'printf \'#!/bin/sh\\n[ "$1" = bound ] || exit 0\\nip addr flush dev $interface\\n'
    'ip addr add $ip/$mask dev $interface\\n[ -n "$router" ] && ip route replace default '
    "via $router\\nexit 0\\n' > /dhcp.sh; chmod +x /dhcp.sh"
)


def qumran(net: NetDaemon, *args: str, stdin: str = "", timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [QUMRAN, *args], input=stdin, capture_output=True, text=True,
        env=net.daemon.env, timeout=timeout,
    )  # fmt: skip


def define_demo(net: NetDaemon, image: DemoImage, name: str, network: str,
                **extra: Any) -> dict[str, Any]:  # fmt: skip
    """Define (or redefine) ``name``: the demo guest with one NIC on ``network``."""
    doc = {
        "name": name, "memory": 192,
        "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd),
                 "cmdline": image.cmdline},
        "nics": [{"network": network}], **extra,
    }  # fmt: skip
    exists = net.daemon.call("GET", f"/v1/vms/{name}").status_code == 200
    method, path = ("PUT", f"/v1/vms/{name}/definition") if exists else ("POST", "/v1/vms")
    result: dict[str, Any] = net.call(method, path, json=doc)
    return result


def boot(net: NetDaemon, name: str, timeout: int = BOOT_TIMEOUT) -> None:
    proc = qumran(net, "start", name, "--console", "--until", READY_LINE,
                  "--timeout", str(timeout), timeout=timeout + 30)  # fmt: skip
    assert proc.returncode == 0, f"{proc.stderr}\n{proc.stdout[-2000:]}"


def sh(net: NetDaemon, vm: str, command: str, timeout: int = 60) -> tuple[int, str]:
    """Run ``command`` in the guest's shell; its exit status and what it printed."""
    mark = next(_marks)
    keys = f"{command}; echo =$?=$(({mark}+0))\n"
    proc = qumran(net, "console", vm, "--until", f"={mark}", "--timeout", str(timeout),
                  stdin=keys, timeout=timeout + 30)  # fmt: skip
    assert proc.returncode == 0, f"{vm}: {command!r}: {proc.stderr}\n{proc.stdout[-2000:]}"
    found = re.search(rf"=(\d+)={mark}", proc.stdout)
    assert found is not None, proc.stdout
    return int(found.group(1)), proc.stdout


def dhcp(net: NetDaemon, name: str, timeout: int = 60) -> str:
    """udhcpc in the guest (sending its name, so dnsmasq knows it); the guest's address.
    One console round trip: each costs seconds in a nested guest."""
    status, out = sh(net, name, f"{DHCP_SCRIPT}; ip link set eth0 up && udhcpc -i eth0 -n "
                                f"-q -t 10 -T 2 -x hostname:{name} -s /dhcp.sh && {SHOW_IP}",
                     timeout=timeout)  # fmt: skip
    assert status == 0, out
    return _address(out)


SHOW_IP = "ip -4 -o addr show dev eth0"


def guest_ip(net: NetDaemon, name: str) -> str:
    return _address(sh(net, name, SHOW_IP)[1])


def _address(out: str) -> str:
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert found is not None, out
    return found.group(1)


def ping(net: NetDaemon, name: str, address: str, extra: str = "-c 2 -W 3") -> bool:
    return sh(net, name, f"ping {extra} {address}")[0] == 0
