"""The synchronous qumrand client: one method per API endpoint (docs/api.md).

Lean on purpose (socket, and the C JSON scanner and encoder only) because the CLI imports
it on every run.
"""

from __future__ import annotations

from qumran.client.errors import ProtocolError
from qumran.client.jsonread import loads
from qumran.client.paths import default_socket_path
from qumran.client.wire import quote, request
from qumran.errors import (
    InvalidArgument,
    InvalidState,
    NotFound,
    PermissionDenied,
    QumranError,
    Timeout,
    from_code,
)

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    from typing import Any

    from qumran.client.schema import (
        DaemonInfo,
        Event,
        HostInfo,
        InterfaceInfo,
        LeaseInfo,
        LoginToken,
        NetworkInfo,
        PoolInfo,
        Stats,
        VmInfo,
        VolumeInfo,
    )

# For error bodies without our {"error": {...}} envelope (say, from the web framework).
_BY_STATUS: dict[int, type[QumranError]] = {
    400: InvalidArgument,
    403: PermissionDenied,
    404: NotFound,
    409: InvalidState,
    422: InvalidArgument,
    504: Timeout,
}


class Client:
    """Talks to one qumrand over its UNIX socket; every call is one short connection."""

    def __init__(self, socket_path: str | None = None, *, timeout: float | None = 60.0) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout

    def host(self) -> HostInfo:
        result: HostInfo = self._call("GET", "/v1/host")
        return result

    def daemon(self) -> DaemonInfo:
        """qumrand itself: pid, socket, settings (``qumran daemon status``)."""
        result: DaemonInfo = self._call("GET", "/v1/daemon")
        return result

    def list_vms(self, all: bool = False) -> list[VmInfo]:
        result: list[VmInfo] = self._call("GET", "/v1/vms?all=true" if all else "/v1/vms")
        return result

    def get_vm(self, name: str) -> VmInfo:
        result: VmInfo = self._call("GET", _vm(name))
        return result

    def define(
        self, doc: dict[str, Any], *, force: bool = False, uuid: str | None = None
    ) -> VmInfo:
        query = "&".join(q for q in ("force=true" if force else "",
                                     f"uuid={uuid}" if uuid else "") if q)  # fmt: skip
        result: VmInfo = self._call("POST", "/v1/vms" + (f"?{query}" if query else ""), doc)
        return result

    def redefine(self, name: str, doc: dict[str, Any], *, force: bool = False) -> VmInfo:
        """Replace a VM's definition (a running VM takes it at its next start)."""
        target = _vm(name) + ("/definition?force=true" if force else "/definition")
        result: VmInfo = self._call("PUT", target, doc)
        return result

    def undefine(self, name: str) -> None:
        self._call("DELETE", _vm(name))

    def start(self, name: str) -> VmInfo:
        return self._action(name, "start")

    def shutdown(self, name: str) -> VmInfo:
        return self._action(name, "shutdown")

    def destroy(self, name: str) -> VmInfo:
        return self._action(name, "destroy")

    def reboot(self, name: str) -> VmInfo:
        """Ask the guest to reboot (Ctrl-Alt-Del)."""
        return self._action(name, "reboot")

    def reset(self, name: str) -> VmInfo:
        """Hard reset."""
        return self._action(name, "reset")

    def suspend(self, name: str) -> VmInfo:
        return self._action(name, "suspend")

    def resume(self, name: str) -> VmInfo:
        return self._action(name, "resume")

    def save(self, name: str, file: str) -> VmInfo:
        """Snapshot a running native VM to ``file`` (absolute), then shut it off."""
        result: VmInfo = self._call("POST", f"{_vm(name)}/save", {"file": file})
        return result

    def restore(self, file: str) -> VmInfo:
        """Start the VM the snapshot ``file`` (absolute) names, from it."""
        result: VmInfo = self._call("POST", "/v1/restore", {"file": file})
        return result

    def managed_save(self, name: str) -> VmInfo:
        return self._action(name, "managedsave")

    def managed_save_remove(self, name: str) -> VmInfo:
        result: VmInfo = self._call("DELETE", f"{_vm(name)}/managedsave")
        return result

    def set_autostart(self, name: str, enabled: bool) -> VmInfo:
        doc = {"enabled": enabled}
        result: VmInfo = self._call("PUT", _vm(name) + "/autostart", doc)
        return result

    def stats(self, name: str) -> Stats:
        """Samples of CPU, memory and I/O for the last 10 minutes, newest last."""
        result: Stats = self._call("GET", f"{_vm(name)}/stats")
        return result

    def interfaces(self, name: str) -> list[InterfaceInfo]:
        """The VM's NICs: TAP, type, network, model, MAC and leased address."""
        result: list[InterfaceInfo] = self._call("GET", f"{_vm(name)}/interfaces")
        return result

    def events(self, since: int | None = None) -> list[Event]:
        target = "/v1/events" if since is None else f"/v1/events?since={int(since)}"
        result: list[Event] = self._call("GET", target)
        return result

    def web_token(self) -> LoginToken:
        """A one-time login URL for the web manager, for the uid this socket belongs to
        (NotFound when qumrand runs without --web)."""
        result: LoginToken = self._call("POST", "/v1/web/token")
        return result

    # storage pools and volumes (docs/storage.md); ``owner``: root naming another's pool
    def pools(self) -> list[PoolInfo]:
        result: list[PoolInfo] = self._call("GET", "/v1/pools")
        return result

    def pool(self, name: str, *, owner: int | None = None) -> PoolInfo:
        result: PoolInfo = self._call("GET", _pool(name) + _owner(owner))
        return result

    def define_pool(self, name: str, path: str) -> PoolInfo:
        result: PoolInfo = self._call("POST", "/v1/pools", {"name": name, "path": path})
        return result

    def undefine_pool(self, name: str, *, owner: int | None = None) -> None:
        self._call("DELETE", _pool(name) + _owner(owner))

    def volumes(self, pool: str = "default", *, owner: int | None = None) -> list[VolumeInfo]:
        result: list[VolumeInfo] = self._call("GET", _pool(pool) + "/volumes" + _owner(owner))
        return result

    def volume(self, name: str, pool: str = "default", *, owner: int | None = None) -> VolumeInfo:
        result: VolumeInfo = self._call("GET", _volume(pool, name) + _owner(owner))
        return result

    def create_volume(
        self,
        name: str,
        size: int,
        *,
        pool: str = "default",
        format: str = "qcow2",
        backing: str | None = None,
        owner: int | None = None,
    ) -> VolumeInfo:
        """A new volume of ``size`` bytes; with ``backing``, a qcow2 overlay on it."""
        doc: dict[str, Any] = {"name": name, "size": size, "format": format}
        if backing is not None:
            doc["backing"] = backing
        result: VolumeInfo = self._call("POST", _pool(pool) + "/volumes" + _owner(owner), doc)
        return result

    def clone_volume(
        self, source: str, new: str, *, pool: str = "default", owner: int | None = None
    ) -> VolumeInfo:
        target = _volume(pool, source) + "/clone" + _owner(owner)
        result: VolumeInfo = self._call("POST", target, {"new": new})
        return result

    def resize_volume(
        self, name: str, size: int, *, pool: str = "default", owner: int | None = None
    ) -> VolumeInfo:
        target = _volume(pool, name) + "/resize" + _owner(owner)
        result: VolumeInfo = self._call("POST", target, {"size": size})
        return result

    def delete_volume(self, name: str, *, pool: str = "default", owner: int | None = None) -> None:
        self._call("DELETE", _volume(pool, name) + _owner(owner))

    def import_volume(
        self, name: str, file: str, *, pool: str = "default", owner: int | None = None
    ) -> VolumeInfo:
        """A new volume: a copy of the image ``file`` (read by qumrand with your rights)."""
        target = _volume(pool, name) + "/import" + _owner(owner)
        result: VolumeInfo = self._call("POST", target, {"file": file})
        return result

    # virtual networks (docs/networks.md)
    def networks(self) -> list[NetworkInfo]:
        result: list[NetworkInfo] = self._call("GET", "/v1/networks")
        return result

    def network(self, name: str) -> NetworkInfo:
        result: NetworkInfo = self._call("GET", _network(name))
        return result

    def define_network(self, doc: dict[str, Any]) -> NetworkInfo:
        """Define a network from its definition (a plain document; qumrand validates it)."""
        result: NetworkInfo = self._call("POST", "/v1/networks", doc)
        return result

    def undefine_network(self, name: str, *, force: bool = False) -> None:
        """Remove a network's definition; ``force``: even while defined VMs use it."""
        self._call("DELETE", _network(name) + ("?force=true" if force else ""))

    def start_network(self, name: str) -> NetworkInfo:
        result: NetworkInfo = self._call("POST", _network(name) + "/start")
        return result

    def destroy_network(self, name: str, *, force: bool = False) -> NetworkInfo:
        """Stop a network; ``force``: even with VMs attached."""
        target = _network(name) + "/destroy" + ("?force=true" if force else "")
        result: NetworkInfo = self._call("POST", target)
        return result

    def set_network_autostart(self, name: str, enabled: bool) -> NetworkInfo:
        result: NetworkInfo = self._call("PUT", _network(name) + "/autostart", {"enabled": enabled})
        return result

    def network_leases(self, name: str) -> list[LeaseInfo]:
        result: list[LeaseInfo] = self._call("GET", _network(name) + "/leases")
        return result

    def _action(self, name: str, action: str) -> VmInfo:
        result: VmInfo = self._call("POST", f"{_vm(name)}/{action}")
        return result

    def _call(self, method: str, target: str, doc: object = None) -> Any:
        body = None if doc is None else _dumps(doc)
        if body is None and method in ("POST", "PUT"):
            body = b""
        resp = request(self.socket_path, method, target, body, timeout=self.timeout)
        if resp.status >= 400:
            raise error_from_response(resp.status, resp.reason, resp.body)
        if not resp.body:
            return None
        try:
            return loads(resp.body)
        except ValueError:
            raise ProtocolError(f"qumrand answered {method} {target} with invalid JSON") from None


def _dumps(doc: object) -> bytes:
    # Not json.dumps: json imports re (~4 ms of start-up); the same C encoder, though.
    from qumran.client.jsonwrite import dumps

    return dumps(doc).encode()


def _vm(name: str) -> str:
    if not name:
        raise InvalidArgument("a VM name cannot be empty")
    return "/v1/vms/" + quote(name)


def _pool(name: str) -> str:
    if not name:
        raise InvalidArgument("a pool name cannot be empty")
    return "/v1/pools/" + quote(name)


def _network(name: str) -> str:
    if not name:
        raise InvalidArgument("a network name cannot be empty")
    return "/v1/networks/" + quote(name)


def _volume(pool: str, name: str) -> str:
    if not name:
        raise InvalidArgument("a volume name cannot be empty")
    return _pool(pool) + "/volumes/" + quote(name)


def _owner(uid: int | None) -> str:
    return "" if uid is None else f"?owner={int(uid)}"


def error_from_response(status: int, reason: str, body: bytes) -> QumranError:
    """Rebuild the daemon's error from a non-2xx answer."""
    try:
        doc = loads(body) if body else None
    except ValueError:
        doc = None
    message = ""
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            return from_code(err["code"], str(err.get("message") or err["code"]))
        if "detail" in doc:
            message = _detail_text(doc["detail"])
    elif body:
        message = body.decode("utf-8", "replace").strip()[:500]
    return error_for_status(status, message or f"qumrand answered HTTP {status} {reason}".rstrip())


def error_for_status(status: int, message: str) -> QumranError:
    """The error class that matches an HTTP status (when no error code came with it)."""
    return _BY_STATUS.get(status, QumranError)(message)


def _detail_text(detail: object) -> str:
    """Flatten a framework error detail, e.g. a list of {"loc": [...], "msg": ...}."""
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for item in detail:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            msg = str(item.get("msg", item))
            parts.append(f"{loc}: {msg}" if loc else msg)
        else:
            parts.append(str(item))
    return "; ".join(parts)
