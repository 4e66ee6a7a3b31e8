"""A running QEMU process as the daemon sees it: its process and its QMP monitor."""

from __future__ import annotations

import itertools
import socket

from qumran.drivers.base import Instance, RunPaths
from qumran.drivers.process import Spawned
from qumran.drivers.qemu.monitor import QmpMonitor


class QemuInstance(Instance):
    """One QEMU process. ``process`` gives the daemon its pid, real state and exit status."""

    def __init__(
        self, process: Spawned, paths: RunPaths, monitor: QmpMonitor, *, graphics: bool = False
    ) -> None:
        super().__init__(process, paths)
        self.monitor = monitor
        self.graphics = graphics
        self._viewers = itertools.count()

    async def powerdown(self) -> None:
        # ACPI power button: the guest decides whether and when to power off.
        await self.monitor.execute("system_powerdown")

    async def reset(self) -> None:
        await self.monitor.execute("system_reset")

    async def request_reboot(self) -> None:
        # Ctrl-Alt-Del on the PS/2 keyboard: systemd and sysvinit reboot cleanly; a kernel
        # whose init never took the key over (reboot(2) CAD_OFF) restarts at once.
        keys = [{"type": "qcode", "data": key} for key in ("ctrl", "alt", "delete")]
        await self.monitor.execute("send-key", {"keys": keys})

    async def pause(self) -> None:
        await self.monitor.execute("stop")

    async def resume(self) -> None:
        await self.monitor.execute("cont")

    async def is_paused(self) -> bool:
        return await self.monitor.status() == "paused"

    async def status(self) -> str:
        """QEMU's own run state ("running", "paused", "internal-error", ...)."""
        return await self.monitor.status()

    async def block_io(self) -> tuple[int, int] | None:
        """Sum of rd_bytes / wr_bytes over the guest's block devices (query-blockstats)."""
        reply = await self.monitor.execute("query-blockstats")
        if not isinstance(reply, list):
            return None
        read = written = 0
        for device in reply:
            stats = device.get("stats", {}) if isinstance(device, dict) else {}
            read += int(stats.get("rd_bytes", 0))
            written += int(stats.get("wr_bytes", 0))
        return read, written

    async def open_display(self) -> socket.socket:
        """One end of a new socket pair; QEMU's VNC server serves the other (add_client),
        so the display never has a socket path anyone could point elsewhere."""
        if not self.graphics:
            return await super().open_display()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        name = f"vnc-viewer-{next(self._viewers)}"
        try:
            await self.monitor.pass_fd(theirs.fileno(), name)
            await self.monitor.execute(
                "add_client", {"protocol": "vnc", "fdname": name, "skipauth": True}
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    async def close(self) -> None:
        await self.monitor.close()
