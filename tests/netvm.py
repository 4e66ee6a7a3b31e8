"""A qumrand inside a network namespace of the test's own, for tests of VMs' NICs on its
networks (tests/netns.py makes the namespaces; nothing is made in the host's own).

The daemon namespace has an uplink veth into an "outside" namespace, the stand-in for the
world; the daemon's networks, TAPs, dnsmasq and rules all live in the daemon namespace.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from daemon_harness import Daemon, remove_tmpdir, short_tmpdir
from netns import Netns, namespaces, veth

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

    def __init__(self, root: Path, ns: Netns, outside: Netns, driver: str) -> None:
        self.ns, self.outside, self.root = ns, outside, root
        self.daemon = Daemon(root, driver=driver, netns=ns.name)
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
def net_daemon(driver: str) -> Iterator[NetDaemon]:
    root = short_tmpdir()
    with namespaces("d", "o") as (ns, outside):
        nd = NetDaemon(root, ns, outside, driver)
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
