"""The procedures of libvirt's remote program that qumrand answers, each on the Manager,
one module per kind of object: ``connect`` (the handshake and the host), ``domains``,
``events``, ``graphics`` (a VM's display for viewers), ``stats``, ``storage`` (pools and
volumes), ``networks``.

Every handler acts as the connection's caller (SO_PEERCRED), through the same daemon
methods as the HTTP API, so a user sees and runs only what the API would let them. A
procedure not registered here is answered with VIR_ERR_NO_SUPPORT by the server, which
libvirt's clients report as "not supported".
"""

from qumran.libvirt.procedures import (
    connect,
    domains,
    events,
    graphics,
    networks,
    stats,
    storage,
)

__all__ = ["connect", "domains", "events", "graphics", "networks", "stats", "storage"]
