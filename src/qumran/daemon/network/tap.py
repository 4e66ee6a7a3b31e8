"""TAP devices for VM NICs: made by qumrand, owned by the VM's user, handed over as an fd.

The TAP is not persistent: it exists while an open file refers to it. qumrand opens it,
attaches it to the network's bridge and passes the fd to the hypervisor, then closes its
own copy; when the VM process ends (however it ends, qumrand running or not), the kernel
removes the TAP with it. (include/uapi/linux/if_tun.h, Documentation/networking/tuntap.rst)
"""

from __future__ import annotations

import ctypes
import fcntl
import os

from qumran.daemon.network import netlink

IFNAMSIZ = 16
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


class ifreq(ctypes.Structure):  # include/uapi/linux/if.h (the flags member of the union)
    _fields_ = [("ifr_name", ctypes.c_char * IFNAMSIZ), ("ifr_flags", ctypes.c_short),
                ("_pad", ctypes.c_byte * 22)]  # fmt: skip


assert ctypes.sizeof(ifreq) == 40  # sizeof(struct ifreq) on x86_64


def _iow(type_: str, nr: int, size: int) -> int:
    """asm-generic/ioctl.h ``_IOW``: direction write (1), size, type byte, number."""
    return (1 << 30) | (size << 16) | (ord(type_) << 8) | nr


_INT = ctypes.sizeof(ctypes.c_int)
TUNSETIFF = _iow("T", 202, _INT)
TUNSETOWNER = _iow("T", 204, _INT)
TUNSETGROUP = _iow("T", 206, _INT)


def open_tap(name: str, uid: int, gid: int, bridge: int, *, vnet_hdr: bool = True) -> int:
    """Create the TAP ``name`` owned by ``uid``:``gid``, without a qdisc, up and a port of
    the bridge with index ``bridge``; return its open fd (close-on-exec: pass it on
    explicitly). On any failure nothing is left: the fd is closed, so the TAP is gone."""
    if not 0 < len(name) < IFNAMSIZ:
        raise ValueError(f"a TAP name is 1-{IFNAMSIZ - 1} characters: {name!r}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        req = ifreq(name.encode(), IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0))
        fcntl.ioctl(fd, TUNSETIFF, req)
        fcntl.ioctl(fd, TUNSETOWNER, uid)
        fcntl.ioctl(fd, TUNSETGROUP, gid)
        link = netlink.find_link(name)
        if link is None:
            raise OSError(f"TAP {name} vanished as it was made")
        netlink.set_noqueue(link.index)
        netlink.set_master(link.index, bridge)
    except BaseException:
        os.close(fd)
        raise
    return fd
