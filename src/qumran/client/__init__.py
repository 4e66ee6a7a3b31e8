"""The Python client of qumrand's API.

``Client`` is synchronous and lean (stdlib only) so the CLI starts fast; the console
(``qumran.client.console``) pulls in ``websockets`` and is imported only when needed.
"""

from qumran.client.client import Client, error_from_response
from qumran.client.errors import DaemonNotRunning, ProtocolError
from qumran.client.paths import default_socket_path
from qumran.client.schema import DriverInfo, Event, HostInfo, VmInfo

__all__ = [
    "Client",
    "DaemonNotRunning",
    "DriverInfo",
    "Event",
    "HostInfo",
    "ProtocolError",
    "VmInfo",
    "default_socket_path",
    "error_from_response",
]
