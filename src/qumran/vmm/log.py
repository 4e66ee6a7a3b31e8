"""Loggers for qumran-vmm that import :mod:`logging` only when a message is emitted.

The standard ``logging`` package costs about 1.2 MiB of resident memory (it pulls in
``traceback``, ``string``, ``weakref``...), a tenth of the VMM's whole budget next to QEMU,
and at the default level (WARNING) a running VMM logs nothing. :func:`get_logger` returns
a stand-in with the usual ``debug``/``info``/``warning``/``error``/``exception`` methods:
below the level set by :func:`configure` a message is dropped without importing anything;
otherwise (or once something else has imported ``logging``, as qumrand and the tests do)
it goes to ``logging.getLogger(name)``, configured then with the VMM's format.
"""

from __future__ import annotations

import sys

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # logging's own numbers
_LEVELS = {"DEBUG": DEBUG, "INFO": INFO, "WARNING": WARNING, "ERROR": ERROR, "CRITICAL": 50}
FORMAT = "qumran-vmm %(levelname)s %(name)s: %(message)s"

_threshold = WARNING
_configure_logging = False  # whether to call logging.basicConfig on first use


def configure(level: str) -> None:
    """Set the process's level (a logging level name); logging is set up on first use."""
    global _threshold, _configure_logging
    name = level.upper()
    if name not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}")
    _threshold = _LEVELS[name]
    _configure_logging = True
    if "logging" in sys.modules:
        _setup_logging()


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=_threshold, format=FORMAT)


class Logger:
    """The part of :class:`logging.Logger` the VMM uses, resolved on first real use."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(self, level: int, msg: str, args: tuple[object, ...], exc_info: bool) -> None:
        if "logging" not in sys.modules:
            if level < _threshold:
                return
            if _configure_logging:
                _setup_logging()
        import logging

        logging.getLogger(self.name).log(level, msg, *args, exc_info=exc_info, stacklevel=3)

    def debug(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._log(DEBUG, msg, args, exc_info)

    def info(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._log(INFO, msg, args, exc_info)

    def warning(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._log(WARNING, msg, args, exc_info)

    def error(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._log(ERROR, msg, args, exc_info)

    def exception(self, msg: str, *args: object) -> None:
        self._log(ERROR, msg, args, True)


def get_logger(name: str) -> Logger:
    return Logger(name)
