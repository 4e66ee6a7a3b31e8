"""The Python client of qumrand's API.

``Client`` is synchronous and lean (stdlib only) so the CLI starts fast; the console
(``qumran.client.console``) pulls in ``websockets`` and is imported only when needed,
and so are the documents' types (``qumran.client.schema``, which needs ``typing``).
"""

from qumran.client.client import Client, error_from_response
from qumran.client.errors import DaemonNotRunning, ProtocolError
from qumran.client.paths import default_socket_path

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    from qumran.client.schema import DaemonInfo, DriverInfo, Event, HostInfo, Stats, VmInfo

_SCHEMA = frozenset({"DaemonInfo", "DriverInfo", "Event", "HostInfo", "Stats", "VmInfo"})

__all__ = [
    "Client",
    "DaemonInfo",
    "DaemonNotRunning",
    "DriverInfo",
    "Event",
    "HostInfo",
    "ProtocolError",
    "Stats",
    "VmInfo",
    "default_socket_path",
    "error_from_response",
]


def __getattr__(name: str) -> object:
    if name in _SCHEMA:
        from qumran.client import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'qumran.client' has no attribute {name!r}")
