"""The shapes of the API's JSON documents (docs/api.md), for type checkers.

They are plain dicts at run time: the client hands back what the daemon sent, so a
newer daemon's extra fields pass through untouched (and ``--json`` prints them).
"""

from __future__ import annotations

# Not `from typing import ...` at run time: typing costs the CLI ~2.5 ms on every run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypedDict

    class VmInfo(TypedDict):
        name: str
        uuid: str
        owner: int
        state: str  # shutoff | running | paused | shutdown | crashed
        reason: str
        hypervisor: str
        pid: int | None
        vcpus: int
        memory_mib: int
        autostart: bool
        cpu_time: float | None
        rss_bytes: int | None
        started_at: float | None
        definition: dict[str, Any]

    class DriverInfo(TypedDict):
        driver: str
        accelerator: str
        reason: str
        version: str
        available: bool

    class HostInfo(TypedDict):
        hostname: str
        uid: int
        drivers: list[DriverInfo]
        version: str

    class Event(TypedDict):
        id: int
        time: float
        vm: str
        owner: int
        event: str
        state: str
        reason: str
        detail: str

    class LoginToken(TypedDict):
        token: str
        url: str
else:
    VmInfo = DriverInfo = HostInfo = Event = LoginToken = dict
