"""Domain events: lifecycle callbacks (CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY).

Qumran's event log, mapped onto libvirt's lifecycle events and details, sent to each
connection that registered for them, for the domains its caller may see.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid as uuidlib
from typing import TYPE_CHECKING

from qumran.daemon.domain import Event, Reason
from qumran.libvirt import constants as c
from qumran.libvirt.errors import RpcError, no_support
from qumran.libvirt.procedures.domains import dom_id, find
from qumran.libvirt.protocol import remote as r
from qumran.libvirt.server import Connection, handles

if TYPE_CHECKING:
    from qumran.daemon.store import EventRecord



def lifecycle(record: EventRecord) -> tuple[int, int] | None:
    """libvirt's (event, detail) for a Qumran event; None: libvirt has no such event."""
    reason = Reason.parse(record.reason)
    match Event(record.event) if record.event in Event._value2member_map_ else None:
        case Event.DEFINED:
            added = reason is Reason.DEFINED
            return c.VIR_DOMAIN_EVENT_DEFINED, (
                c.VIR_DOMAIN_EVENT_DEFINED_ADDED if added else c.VIR_DOMAIN_EVENT_DEFINED_UPDATED
            )
        case Event.UNDEFINED:
            return c.VIR_DOMAIN_EVENT_UNDEFINED, 0
        case Event.STARTED:
            return c.VIR_DOMAIN_EVENT_STARTED, c.VIR_DOMAIN_EVENT_STARTED_BOOTED
        case Event.SUSPENDED:
            return c.VIR_DOMAIN_EVENT_SUSPENDED, c.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED
        case Event.RESUMED:
            return c.VIR_DOMAIN_EVENT_RESUMED, c.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED
        case Event.SHUTDOWN if reason is Reason.GUEST:
            return c.VIR_DOMAIN_EVENT_SHUTDOWN, c.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST
        case Event.CRASHED:
            return c.VIR_DOMAIN_EVENT_CRASHED, c.VIR_DOMAIN_EVENT_CRASHED_PANICKED
        case Event.STOPPED:
            detail = {Reason.DESTROYED: c.VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
                      Reason.CRASHED: c.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
                      Reason.KILLED: c.VIR_DOMAIN_EVENT_STOPPED_FAILED,
                      Reason.GONE: c.VIR_DOMAIN_EVENT_STOPPED_FAILED}.get(
                          reason, c.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)  # fmt: skip
            return c.VIR_DOMAIN_EVENT_STOPPED, detail
    return None


@handles(r.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY)
async def register_event(
    conn: Connection, args: r.remote_connect_domain_event_callback_register_any_args
) -> r.remote_connect_domain_event_callback_register_any_ret:
    if args.eventID != c.VIR_DOMAIN_EVENT_ID_LIFECYCLE:
        # Only lifecycle events exist in Qumran; registering for one that never comes
        # would be harmless, but the client would wait for it in vain: say so.
        raise no_support(f"domain event {args.eventID} (Qumran sends lifecycle events)")
    uuid = None
    if args.dom is not None:
        uuid = find(conn, args.dom).uuid
    callback = conn.next_callback
    conn.next_callback += 1
    conn.callbacks[callback] = (args.eventID, uuid)
    if conn.event_queue is None:
        conn.event_queue = conn.manager.events.subscribe()
        conn.spawn(_pump_events(conn, conn.event_queue), "libvirt events")
    return r.remote_connect_domain_event_callback_register_any_ret(callback)


@handles(r.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY)
async def deregister_event(
    conn: Connection, args: r.remote_connect_domain_event_callback_deregister_any_args
) -> None:
    if conn.callbacks.pop(args.callbackID, None) is None:
        raise RpcError(c.VIR_ERR_INVALID_ARG, f"no domain event callback {args.callbackID}")


async def _pump_events(conn: Connection, queue: asyncio.Queue[EventRecord]) -> None:
    everything = conn.caller.uid in (0, os.geteuid())  # the daemon's ownership rule
    while True:
        record = await queue.get()
        if not (everything or record.owner == conn.caller.uid):
            continue
        mapped = lifecycle(record)
        if mapped is None:
            continue
        dom = conn.manager.domains.get(record.vm)
        live = dom if dom is not None and dom.uuid == record.uuid else None
        ref = r.remote_nonnull_domain(record.vm, uuidlib.UUID(record.uuid).bytes,
                                      dom_id(live) if live is not None else -1)  # fmt: skip
        for callback, (_, uuid) in list(conn.callbacks.items()):
            if uuid is None or uuid == record.uuid:
                msg = r.remote_domain_event_callback_lifecycle_msg(
                    callback, r.remote_domain_event_lifecycle_msg(ref, *mapped)
                )
                conn.send_event(r.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE, msg)
        with contextlib.suppress(ConnectionError):
            await conn.writer.drain()
