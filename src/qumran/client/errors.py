"""Errors raised by the client itself (the daemon's own errors arrive as their codes).

Both derive from :class:`qumran.errors.ConnectionFailed`: to a caller, a daemon that
cannot be reached and a daemon that answers gibberish are the same problem.
"""

from __future__ import annotations

from qumran.errors import ConnectionFailed


class DaemonNotRunning(ConnectionFailed):
    """Nothing listens on the socket (or it does not exist)."""


class ProtocolError(ConnectionFailed):
    """The peer's answer is not the HTTP/1.1 + JSON the API promises."""
