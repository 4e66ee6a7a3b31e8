"""A VM's graphical display for libvirt's viewers: virt-viewer, virt-manager's console.

Qumran's VNC has no listening socket (QEMU runs ``-vnc none``; each viewer gets a socket
pair QEMU adopts over QMP, drivers/qemu/instance.py), so the domain XML names no port or
socket (``<listen type='none'/>``) and a viewer asks for a connection with
``virDomainOpenGraphicsFD``: qumrand opens a new connection to the display and hands the
viewer its end over the libvirt socket itself (SCM_RIGHTS). Nothing is reachable by
anyone who could not already call the procedure: the display is the VM's owner's, as on
the web manager's VNC WebSocket.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from qumran.errors import InvalidState
from qumran.libvirt import constants as c
from qumran.libvirt import fdpass
from qumran.libvirt.errors import RpcError
from qumran.libvirt.procedures.domains import find
from qumran.libvirt.protocol import remote as r
from qumran.libvirt.server import handles

if TYPE_CHECKING:
    from qumran.libvirt.server import Connection

# include/libvirt/libvirt-domain.h: virDomainOpenGraphicsFlags.
VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH = 1


@handles(r.REMOTE_PROC_DOMAIN_OPEN_GRAPHICS_FD)
async def open_graphics_fd(
    conn: Connection, args: r.remote_domain_open_graphics_fd_args
) -> fdpass.WithFds:
    if args.flags & ~VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH:
        raise RpcError(
            c.VIR_ERR_INVALID_ARG, f"unsupported flags ({args.flags:#x}) in virDomainOpenGraphicsFD"
        )
    dom = find(conn, args.dom)
    if args.idx != 0:
        raise RpcError(c.VIR_ERR_INVALID_ARG,
                       f"VM {dom.name!r} has one display, number 0, not {args.idx}")  # fmt: skip
    if dom.run is None:
        raise InvalidState(f"domain is not running: {dom.name!r}")
    if not dom.spec.graphics:
        raise InvalidState(
            f"VM {dom.name!r} has no graphical display; define it with "
            "<graphics type='vnc'/> (graphics: true) and start it again"
        )
    display: socket.socket = await dom.run.instance.open_display()
    # Qumran's VNC asks for no password (each connection is handed over already vouched
    # for), so the viewer's SKIPAUTH flag changes nothing.
    return fdpass.WithFds(None, [display])

