"""What the guest asks of the VMM process: the events that end or restart a boot."""

from __future__ import annotations

import enum
from collections.abc import Callable


class GuestEvent(enum.Enum):
    POWEROFF = "poweroff"  # ACPI S5: the process ends with status 0
    REBOOT = "reboot"  # reset line / ACPI reset register: boot again in this process
    CRASH = "crash"  # triple fault or KVM error: the process ends non-zero


class GuestEventNotice:
    __slots__ = ("boot", "detail", "event", "vcpu")

    def __init__(
        self, event: GuestEvent, detail: str, vcpu: int | None = None, boot: int = 0
    ) -> None:
        self.event = event
        self.detail = detail
        self.vcpu = vcpu
        self.boot = boot  # which boot of the guest raised it: events of a torn-down boot are void

    def __repr__(self) -> str:
        return (
            f"GuestEventNotice({self.event}, {self.detail!r}, vcpu={self.vcpu}, boot={self.boot})"
        )


EventSink = Callable[[GuestEventNotice], None]


def for_boot(sink: EventSink, boot: int) -> EventSink:
    """A sink that stamps every notice with the boot it belongs to."""
    return lambda n: sink(GuestEventNotice(n.event, n.detail, n.vcpu, boot))
