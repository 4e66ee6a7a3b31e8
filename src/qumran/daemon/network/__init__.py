"""Virtual networks (libvirt's network driver role), in qumrand.

- :mod:`.netlink`: bridges, addresses, routes (pyroute2); :mod:`.tap`: a VM NIC's TAP;
- :mod:`.nft`: the firewall table ``inet qumran``, generated whole;
- :mod:`.dnsmasq`: one dnsmasq per network for DHCP and DNS, and its leases;
- :mod:`.addressing`: subnet clashes and the default network's subnet;
- :mod:`.plumbing`: one network brought up, re-adopted, taken down, nothing half-made;
- :mod:`.service`: :class:`Networks`, the facade the API and the Manager call.

docs/networks.md describes it for users.
"""

from qumran.daemon.network.service import Networks

__all__ = ["Networks"]
