"""The command line read without argparse, for the common case.

argparse brings ``re``, ``enum`` and ``gettext`` with it: ~5 ms of a `qumran` run whose
whole budget, against virsh, is ~12 ms. Yet most command lines are the command, its
positional arguments, some of its flags, and ``--json``/``--socket``. Such a line is read
here into what argparse would make of it, from the same declarations (each command's
``arguments`` function, run against a recorder instead of a parser). Anything else —
help, an unknown or abbreviated option, ``--opt=value``, ``--``, a missing or extra
argument, a value its type refuses, a command declaring what the recorder does not know
— gives None, and argparse reads the line, with its own messages.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing stays out of the CLI's fast path
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from qumran.cli.commands import Command

_KNOWN = frozenset({"help", "metavar", "action", "type", "default", "dest"})


class Args:
    """The parsed command line: attributes, as argparse's Namespace has them."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"Args({self.__dict__!r})"


class _Recorder:
    """Takes a command's ``add_argument`` calls in place of an ArgumentParser."""

    def __init__(self) -> None:
        self.positionals: list[tuple[str, Callable[[str], Any] | None]] = []
        self.options: dict[str, tuple[str, bool, Callable[[str], Any] | None]] = {}
        self.defaults: dict[str, Any] = {}
        self.simple = True  # False: the command declares more than this reader knows

    def add_argument(self, *names: str, **kw: Any) -> None:
        action = kw.get("action", "store")
        if not names or set(kw) - _KNOWN or action not in ("store", "store_true"):
            self.simple = False
            return
        kind = kw.get("type")
        if not names[0].startswith("-"):
            if len(names) != 1 or action != "store" or "default" in kw:
                self.simple = False
                return
            self.positionals.append((kw.get("dest", names[0]), kind))
            return
        longs = [n for n in names if n.startswith("--")]
        dest = kw.get("dest") or (longs[0] if longs else names[0]).lstrip("-").replace("-", "_")
        flag = action == "store_true"
        for name in names:
            self.options[name] = (dest, flag, kind)
        self.defaults[dest] = kw.get("default", False if flag else None)

    def __getattr__(self, name: str) -> Any:  # add_subparsers, add_mutually_exclusive_group...
        self.simple = False
        raise AttributeError(name)


def parse(argv: Sequence[str], commands: Sequence[Command]) -> Args | None:
    """What argparse would make of ``argv``, or None where argparse must read it."""
    values: dict[str, Any] = {"json": False, "socket": None}
    command: Command | None = None
    recorder = _Recorder()
    positionals: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--json":
            values["json"] = True
        elif word == "--socket":
            path = next(words, None)
            if path is None or path.startswith("-"):
                return None
            values["socket"] = path
        elif command is None:
            command = next((c for c in commands if c.name == word), None)
            if command is None:
                return None  # an option before the command (-h), or no such command
            try:
                command.arguments(recorder)  # type: ignore[arg-type]
            except AttributeError:
                return None
            if not recorder.simple:
                return None
        elif word.startswith("-") and word != "-":
            if word not in recorder.options:
                return None
            dest, flag, kind = recorder.options[word]
            if flag:
                values[dest] = True
                continue
            value = next(words, None)
            if value is None or value.startswith("-"):
                return None
            try:
                values[dest] = kind(value) if kind else value
            except (TypeError, ValueError):
                return None
        else:
            positionals.append(word)
    if command is None or len(positionals) != len(recorder.positionals):
        return None
    for (dest, kind), word in zip(recorder.positionals, positionals, strict=True):
        try:
            values[dest] = kind(word) if kind else word
        except (TypeError, ValueError):
            return None
    for dest, default in recorder.defaults.items():
        values.setdefault(dest, default)
    return Args(**values, command=command.name, handler=command.handler)
