"""Domains: listing, lookups, one domain's info and XML, define and undefine, the
lifecycle, and the console.

Identity: a domain's UUID is its Qumran uuid; its id is its hypervisor's process id
while it runs (a Qumran VM *is* a process), -1 when shut off, as libvirt's are.
"""

from __future__ import annotations

import contextlib
import functools
import uuid as uuidlib
from typing import Any

from qumran.config import domxml
from qumran.config.xmlread import XmlInvalid, XmlUnsupported
from qumran.daemon.domain import Domain, Reason, State
from qumran.errors import AlreadyExists, InvalidState
from qumran.libvirt import constants as c
from qumran.libvirt import host
from qumran.libvirt.console import ConsoleStream
from qumran.libvirt.errors import RpcError, no_domain
from qumran.libvirt.protocol import remote as r
from qumran.libvirt.server import Connection, handles

# --- domains on the wire ----------------------------------------------------------------


def wire(dom: Domain) -> r.remote_nonnull_domain:
    return r.remote_nonnull_domain(dom.name, uuid_bytes(dom.uuid), dom_id(dom))


@functools.lru_cache(maxsize=4096)
def uuid_bytes(text: str) -> bytes:
    """A VM's uuid as libvirt's 16 bytes: every listing sends every VM's, and parsing the
    same strings again each time was a third of a listing's cost."""
    return uuidlib.UUID(text).bytes


def dom_id(dom: Domain) -> int:
    return dom.run.process.pid if dom.run is not None else -1


def find(conn: Connection, ref: r.remote_nonnull_domain) -> Domain:
    """The domain a call names: by UUID (libvirtd looks up the same way), then name."""
    uuid = str(uuidlib.UUID(bytes=ref.uuid)) if len(ref.uuid) == 16 else ""
    for dom in list(conn.manager.domains.values()):
        if dom.uuid == uuid:
            return conn.manager.get(conn.caller, dom.name)  # the ownership check
    if ref.name in conn.manager.domains:
        return conn.manager.get(conn.caller, ref.name)
    raise no_domain(f"uuid '{uuid}' (name '{ref.name}')")


_STATES = {
    State.SHUTOFF: c.VIR_DOMAIN_SHUTOFF,
    State.RUNNING: c.VIR_DOMAIN_RUNNING,
    State.PAUSED: c.VIR_DOMAIN_PAUSED,
    State.SHUTDOWN: c.VIR_DOMAIN_SHUTDOWN,
    State.CRASHED: c.VIR_DOMAIN_CRASHED,
}


def state_of(dom: Domain) -> tuple[int, int]:
    """libvirt's (state, reason) for a domain."""
    state, reason = _STATES[dom.state], 0
    match dom.state:
        case State.SHUTOFF:
            reason = {Reason.DESTROYED: c.VIR_DOMAIN_SHUTOFF_DESTROYED,
                      Reason.SHUTDOWN: c.VIR_DOMAIN_SHUTOFF_SHUTDOWN,
                      Reason.CRASHED: c.VIR_DOMAIN_SHUTOFF_CRASHED,
                      Reason.KILLED: c.VIR_DOMAIN_SHUTOFF_FAILED}.get(dom.reason, 0)  # fmt: skip
        case State.RUNNING:
            reason = {Reason.BOOTED: c.VIR_DOMAIN_RUNNING_BOOTED,
                      Reason.AUTOSTART: c.VIR_DOMAIN_RUNNING_BOOTED,
                      Reason.USER: c.VIR_DOMAIN_RUNNING_UNPAUSED}.get(dom.reason, 0)  # fmt: skip
        case State.PAUSED:
            reason = c.VIR_DOMAIN_PAUSED_USER if dom.reason is Reason.USER else 0
        case State.SHUTDOWN:
            reason = c.VIR_DOMAIN_SHUTDOWN_USER if dom.reason is Reason.USER else 0
        case State.CRASHED:
            reason = c.VIR_DOMAIN_CRASHED_PANICKED
    return state, reason

# --- listing and lookups ----------------------------------------------------------------


def matches(dom: Domain, flags: int) -> bool:
    if not flags:  # python3-libvirt's listAllDomains() and `virsh list --all`: every one
        return True
    active = dom.active
    groups = (
        (c.VIR_CONNECT_LIST_DOMAINS_ACTIVE, active, c.VIR_CONNECT_LIST_DOMAINS_INACTIVE,
         not active),
        (c.VIR_CONNECT_LIST_DOMAINS_PERSISTENT, True, c.VIR_CONNECT_LIST_DOMAINS_TRANSIENT,
         False),
        (c.VIR_CONNECT_LIST_DOMAINS_AUTOSTART, dom.autostart,
         c.VIR_CONNECT_LIST_DOMAINS_NO_AUTOSTART, not dom.autostart),
        (c.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE, False, c.VIR_CONNECT_LIST_DOMAINS_NO_MANAGEDSAVE,
         True),
        (c.VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT, False, c.VIR_CONNECT_LIST_DOMAINS_NO_SNAPSHOT,
         True),
    )  # fmt: skip
    # In each group, a domain must match one of the flags given (none given: any does).
    for yes_flag, yes, no_flag, no in groups:
        wanted = flags & (yes_flag | no_flag)
        if wanted and not ((flags & yes_flag and yes) or (flags & no_flag and no)):
            return False
    states = flags & (
        c.VIR_CONNECT_LIST_DOMAINS_RUNNING | c.VIR_CONNECT_LIST_DOMAINS_PAUSED
        | c.VIR_CONNECT_LIST_DOMAINS_SHUTOFF | c.VIR_CONNECT_LIST_DOMAINS_OTHER
    )  # fmt: skip
    if states:
        state = {State.RUNNING: c.VIR_CONNECT_LIST_DOMAINS_RUNNING,
                 State.PAUSED: c.VIR_CONNECT_LIST_DOMAINS_PAUSED,
                 State.SHUTOFF: c.VIR_CONNECT_LIST_DOMAINS_SHUTOFF}.get(
                     dom.state, c.VIR_CONNECT_LIST_DOMAINS_OTHER)  # fmt: skip
        return bool(states & state)
    return True


@handles(r.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS)
async def list_all(
    conn: Connection, args: r.remote_connect_list_all_domains_args
) -> r.remote_connect_list_all_domains_ret:
    doms = [wire(d) for d in conn.manager.visible(conn.caller) if matches(d, args.flags)]
    doms = doms[: r.REMOTE_DOMAIN_LIST_MAX]
    return r.remote_connect_list_all_domains_ret(doms if args.need_results else [], len(doms))


@handles(r.REMOTE_PROC_CONNECT_NUM_OF_DOMAINS)
async def num_active(conn: Connection, _: None) -> r.remote_connect_num_of_domains_ret:
    return r.remote_connect_num_of_domains_ret(
        sum(1 for d in conn.manager.visible(conn.caller) if d.active)
    )


@handles(r.REMOTE_PROC_CONNECT_LIST_DOMAINS)
async def list_ids(
    conn: Connection, args: r.remote_connect_list_domains_args
) -> r.remote_connect_list_domains_ret:
    ids = [dom_id(d) for d in conn.manager.visible(conn.caller) if d.active]
    return r.remote_connect_list_domains_ret(ids[: max(0, min(args.maxids, 16384))])


@handles(r.REMOTE_PROC_CONNECT_NUM_OF_DEFINED_DOMAINS)
async def num_inactive(conn: Connection, _: None) -> r.remote_connect_num_of_defined_domains_ret:
    return r.remote_connect_num_of_defined_domains_ret(
        sum(1 for d in conn.manager.visible(conn.caller) if not d.active)
    )


@handles(r.REMOTE_PROC_CONNECT_LIST_DEFINED_DOMAINS)
async def list_inactive(
    conn: Connection, args: r.remote_connect_list_defined_domains_args
) -> r.remote_connect_list_defined_domains_ret:
    names = [d.name for d in conn.manager.visible(conn.caller) if not d.active]
    return r.remote_connect_list_defined_domains_ret(names[: max(0, min(args.maxnames, 16384))])


@handles(r.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME)
async def by_name(
    conn: Connection, args: r.remote_domain_lookup_by_name_args
) -> r.remote_domain_lookup_by_name_ret:
    if args.name not in conn.manager.domains:
        raise no_domain(f"name '{args.name}'")
    return r.remote_domain_lookup_by_name_ret(wire(conn.manager.get(conn.caller, args.name)))


@handles(r.REMOTE_PROC_DOMAIN_LOOKUP_BY_UUID)
async def by_uuid(
    conn: Connection, args: r.remote_domain_lookup_by_uuid_args
) -> r.remote_domain_lookup_by_uuid_ret:
    uuid = str(uuidlib.UUID(bytes=args.uuid))
    for dom in list(conn.manager.domains.values()):
        if dom.uuid == uuid:
            return r.remote_domain_lookup_by_uuid_ret(wire(conn.manager.get(conn.caller, dom.name)))
    raise no_domain(f"uuid '{uuid}'")


@handles(r.REMOTE_PROC_DOMAIN_LOOKUP_BY_ID)
async def by_id(
    conn: Connection, args: r.remote_domain_lookup_by_id_args
) -> r.remote_domain_lookup_by_id_ret:
    for dom in list(conn.manager.domains.values()):
        if dom.run is not None and dom.run.process.pid == args.id:
            return r.remote_domain_lookup_by_id_ret(wire(conn.manager.get(conn.caller, dom.name)))
    raise no_domain(f"id '{args.id}'")


# --- one domain -------------------------------------------------------------------------


@handles(r.REMOTE_PROC_DOMAIN_GET_INFO)
async def get_info(
    conn: Connection, args: r.remote_domain_get_info_args
) -> r.remote_domain_get_info_ret:
    dom = find(conn, args.dom)
    info = dom.info()
    kib = dom.spec.memory * 1024
    cpu_ns = int((info["cpu_time"] or 0) * 1e9)
    return r.remote_domain_get_info_ret(state_of(dom)[0], kib, kib if dom.active else 0,
                                        dom.spec.vcpus, cpu_ns)  # fmt: skip


@handles(r.REMOTE_PROC_DOMAIN_GET_STATE)
async def get_state(
    conn: Connection, args: r.remote_domain_get_state_args
) -> r.remote_domain_get_state_ret:
    return r.remote_domain_get_state_ret(*state_of(find(conn, args.dom)))


@handles(r.REMOTE_PROC_DOMAIN_GET_OS_TYPE)
async def os_type(
    conn: Connection, args: r.remote_domain_get_os_type_args
) -> r.remote_domain_get_os_type_ret:
    find(conn, args.dom)
    return r.remote_domain_get_os_type_ret("hvm")


@handles(r.REMOTE_PROC_DOMAIN_IS_ACTIVE)
async def is_active(
    conn: Connection, args: r.remote_domain_is_active_args
) -> r.remote_domain_is_active_ret:
    return r.remote_domain_is_active_ret(int(find(conn, args.dom).active))


@handles(r.REMOTE_PROC_DOMAIN_IS_PERSISTENT)
async def is_persistent(
    conn: Connection, args: r.remote_domain_is_persistent_args
) -> r.remote_domain_is_persistent_ret:
    find(conn, args.dom)
    return r.remote_domain_is_persistent_ret(1)  # every Qumran VM is defined


@handles(r.REMOTE_PROC_DOMAIN_IS_UPDATED)
async def is_updated(
    conn: Connection, args: r.remote_domain_is_updated_args
) -> r.remote_domain_is_updated_ret:
    return r.remote_domain_is_updated_ret(int(find(conn, args.dom).pending is not None))


@handles(r.REMOTE_PROC_DOMAIN_HAS_MANAGED_SAVE_IMAGE)
async def managed_save(
    conn: Connection, args: r.remote_domain_has_managed_save_image_args
) -> r.remote_domain_has_managed_save_image_ret:
    find(conn, args.dom)
    return r.remote_domain_has_managed_save_image_ret(0)


@handles(r.REMOTE_PROC_DOMAIN_GET_MAX_MEMORY)
async def max_memory(
    conn: Connection, args: r.remote_domain_get_max_memory_args
) -> r.remote_domain_get_max_memory_ret:
    return r.remote_domain_get_max_memory_ret(find(conn, args.dom).spec.memory * 1024)


@handles(r.REMOTE_PROC_DOMAIN_GET_VCPUS_FLAGS)
async def vcpus_flags(
    conn: Connection, args: r.remote_domain_get_vcpus_flags_args
) -> r.remote_domain_get_vcpus_flags_ret:
    return r.remote_domain_get_vcpus_flags_ret(find(conn, args.dom).spec.vcpus)


@handles(r.REMOTE_PROC_DOMAIN_GET_AUTOSTART)
async def get_autostart(
    conn: Connection, args: r.remote_domain_get_autostart_args
) -> r.remote_domain_get_autostart_ret:
    return r.remote_domain_get_autostart_ret(int(find(conn, args.dom).autostart))


@handles(r.REMOTE_PROC_DOMAIN_SET_AUTOSTART)
async def set_autostart(conn: Connection, args: r.remote_domain_set_autostart_args) -> None:
    await conn.manager.set_autostart(conn.caller, find(conn, args.dom).name, bool(args.autostart))


@handles(r.REMOTE_PROC_DOMAIN_GET_XML_DESC)
async def dumpxml(
    conn: Connection, args: r.remote_domain_get_xml_desc_args
) -> r.remote_domain_get_xml_desc_ret:
    dom = find(conn, args.dom)
    spec = dom.spec
    if args.flags & c.VIR_DOMAIN_XML_INACTIVE and dom.pending is not None:
        spec = dom.pending
    running = dom.active and not args.flags & c.VIR_DOMAIN_XML_INACTIVE
    xml = domxml.to_xml(dom.name, dom.uuid, spec, dom_id=dom_id(dom) if running else None,
                        accelerator=host.accelerator(conn.manager))  # fmt: skip
    return r.remote_domain_get_xml_desc_ret(xml)


def _parse(xml: str) -> tuple[dict[str, Any], str | None]:
    try:
        doc, uuid = domxml.parse(xml)
    except XmlUnsupported as exc:
        raise RpcError(c.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"unsupported configuration: {exc.message}", c.VIR_FROM_DOMAIN) from None
    except XmlInvalid as exc:
        raise RpcError(c.VIR_ERR_XML_ERROR, f"XML error: {exc.message}", c.VIR_FROM_XML) from None
    return doc, uuid


async def _define(conn: Connection, xml: str) -> r.remote_nonnull_domain:
    doc, uuid = _parse(xml)
    name = doc.get("name")
    existing = conn.manager.domains.get(name) if isinstance(name, str) else None
    if existing is not None:
        # libvirt's define of a known name updates that domain, if the UUIDs agree.
        if uuid is not None and uuid != existing.uuid:
            raise AlreadyExists(f"domain '{name}' already exists with uuid {existing.uuid}")
        return wire(await conn.manager.redefine(conn.caller, existing.name, doc))
    return wire(await conn.manager.define(conn.caller, doc, uuid=uuid))


@handles(r.REMOTE_PROC_DOMAIN_DEFINE_XML)
async def define(conn: Connection, args: r.remote_domain_define_xml_args) -> Any:
    return r.remote_domain_define_xml_ret(await _define(conn, args.xml))


@handles(r.REMOTE_PROC_DOMAIN_DEFINE_XML_FLAGS)
async def define_flags(conn: Connection, args: r.remote_domain_define_xml_flags_args) -> Any:
    return r.remote_domain_define_xml_flags_ret(await _define(conn, args.xml))


@handles(r.REMOTE_PROC_DOMAIN_CREATE_XML)
async def create_xml(
    conn: Connection, args: r.remote_domain_create_xml_args
) -> r.remote_domain_create_xml_ret:
    """``virsh create``, and how virt-install and virt-manager start a new VM (then
    defining the same XML). Qumran has no transient VMs: the domain is defined and
    started, and stays defined after it stops; if it does not start, it is undefined
    again, so a failed create leaves nothing, as libvirt's does."""
    if args.flags:
        raise RpcError(c.VIR_ERR_INVALID_ARG, f"invalid argument: flags {args.flags:#x}: "
                       "Qumran starts a created domain without flags (no paused start, "
                       "no autodestroy)", c.VIR_FROM_DOMAIN)  # fmt: skip
    doc, uuid = _parse(args.xml_desc)
    name = doc.get("name")
    if isinstance(name, str) and name in conn.manager.domains:
        raise AlreadyExists(f"domain '{name}' already exists; start it (virsh start)")
    dom = await conn.manager.define(conn.caller, doc, uuid=uuid)
    try:
        dom = await conn.manager.start(conn.caller, dom.name)
    except Exception:
        with contextlib.suppress(Exception):  # the start's error is the one to report
            await conn.manager.undefine(conn.caller, dom.name)
        raise
    return r.remote_domain_create_xml_ret(wire(dom))


@handles(r.REMOTE_PROC_DOMAIN_UNDEFINE)
async def undefine(conn: Connection, args: r.remote_domain_undefine_args) -> None:
    await conn.manager.undefine(conn.caller, find(conn, args.dom).name)


@handles(r.REMOTE_PROC_DOMAIN_UNDEFINE_FLAGS)
async def undefine_flags(conn: Connection, args: r.remote_domain_undefine_flags_args) -> None:
    await conn.manager.undefine(conn.caller, find(conn, args.dom).name)


@handles(r.REMOTE_PROC_DOMAIN_CREATE)
async def create(conn: Connection, args: r.remote_domain_create_args) -> None:
    await conn.manager.start(conn.caller, find(conn, args.dom).name)


@handles(r.REMOTE_PROC_DOMAIN_CREATE_WITH_FLAGS)
async def create_flags(
    conn: Connection, args: r.remote_domain_create_with_flags_args
) -> r.remote_domain_create_with_flags_ret:
    dom = await conn.manager.start(conn.caller, find(conn, args.dom).name)
    return r.remote_domain_create_with_flags_ret(wire(dom))


async def _lifecycle(conn: Connection, ref: r.remote_nonnull_domain, action: str) -> None:
    dom = find(conn, ref)
    if action != "resume" and dom.run is None:
        raise InvalidState(f"domain is not running: {dom.name!r}")
    await getattr(conn.manager, action)(conn.caller, dom.name)


@handles(r.REMOTE_PROC_DOMAIN_DESTROY)
async def destroy(conn: Connection, args: r.remote_domain_destroy_args) -> None:
    await _lifecycle(conn, args.dom, "destroy")


@handles(r.REMOTE_PROC_DOMAIN_DESTROY_FLAGS)
async def destroy_flags(conn: Connection, args: r.remote_domain_destroy_flags_args) -> None:
    await _lifecycle(conn, args.dom, "destroy")


@handles(r.REMOTE_PROC_DOMAIN_SHUTDOWN)
async def shutdown(conn: Connection, args: r.remote_domain_shutdown_args) -> None:
    await _lifecycle(conn, args.dom, "shutdown")


@handles(r.REMOTE_PROC_DOMAIN_SHUTDOWN_FLAGS)
async def shutdown_flags(conn: Connection, args: r.remote_domain_shutdown_flags_args) -> None:
    await _lifecycle(conn, args.dom, "shutdown")


@handles(r.REMOTE_PROC_DOMAIN_REBOOT)
async def reboot(conn: Connection, args: r.remote_domain_reboot_args) -> None:
    await _lifecycle(conn, args.dom, "reboot")


@handles(r.REMOTE_PROC_DOMAIN_RESET)
async def reset(conn: Connection, args: r.remote_domain_reset_args) -> None:
    await _lifecycle(conn, args.dom, "reset")


@handles(r.REMOTE_PROC_DOMAIN_SUSPEND)
async def suspend(conn: Connection, args: r.remote_domain_suspend_args) -> None:
    await _lifecycle(conn, args.dom, "suspend")


@handles(r.REMOTE_PROC_DOMAIN_RESUME)
async def resume(conn: Connection, args: r.remote_domain_resume_args) -> None:
    await _lifecycle(conn, args.dom, "resume")

# --- the console stream (qumran.libvirt.console) ---------------------------------------


@handles(r.REMOTE_PROC_DOMAIN_OPEN_CONSOLE)
async def open_console(conn: Connection, args: r.remote_domain_open_console_args) -> None:
    dom = find(conn, args.dom)
    if dom.run is None:
        raise InvalidState(f"domain is not running: {dom.name!r}")
    if args.dev_name not in (None, "serial0", "console0"):
        raise RpcError(c.VIR_ERR_INVALID_ARG, f"cannot find character device {args.dev_name}")
    assert conn.current is not None
    # Registered now, so the client's first keystrokes find it; its output waits in the
    # pump's task until the call's reply is out (the server sends that when this returns).
    ConsoleStream(conn, conn.current, dom.run.console).start()
