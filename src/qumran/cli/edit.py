"""`qumran dumpdef` and `qumran edit`: a definition as YAML; `qumran dumpxml` and
`define --xml`: as libvirt domain XML.

``dumpdef`` prints the definition the daemon keeps, in the form ``qumran define`` reads
back unchanged. ``edit`` dumps it to a private temporary file, opens ``$VISUAL`` or
``$EDITOR`` (else ``vi``) on it, and sends what was saved: the daemon validates it, and
on an invalid definition a person at a terminal may edit again or give up; a script
(stdin not a terminal) gets the error and exit status 1.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qumran.config.files import MAX_FILE_BYTES, parse_definition, resolve_paths
from qumran.errors import InvalidArgument, QumranError

if TYPE_CHECKING:
    from qumran.client import Client
    from qumran.client.schema import VmInfo


class Unchanged(Exception):
    """The editor saved no change: nothing to send (not an error, as in virsh)."""


class Abandoned(QumranError):
    """The edit was given up (or the editor failed): the definition is as it was."""

    code = "abandoned"


def dump_yaml(definition: dict[str, Any]) -> str:
    import yaml

    # Field order as the daemon keeps it (name first); strings that would read back as
    # something else (yes, 1e3, null) are quoted by the safe dumper.
    text: str = yaml.safe_dump(
        definition, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    return text


def next_definition(vm: VmInfo) -> dict[str, Any]:
    """What the VM's next start uses: an edit saved while it ran, else its definition."""
    return vm.get("pending_definition") or vm["definition"]


def edit(client: Client, name: str, *, force: bool = False) -> VmInfo:
    """Run the edit session; the daemon's answer once it took the new definition."""
    original = dump_yaml(next_definition(client.get_vm(name)))
    fd, path = tempfile.mkstemp(prefix=f"qumran-{name}-", suffix=".yaml")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(original)
        while True:
            _run_editor(path)
            text = _read(path)
            if text == original:
                raise Unchanged(name)
            try:
                # Relative paths typed in the editor are the user's, not the temp folder's.
                doc = resolve_paths(parse_definition(text, source=path), Path.cwd())
                return client.redefine(name, doc, force=force)
            except InvalidArgument as exc:
                if not sys.stdin.isatty():
                    raise
                sys.stderr.write(f"error: {exc.message}\n")
                if not _ask("Edit again? [y/n] "):
                    message = f"VM {name!r}: edit abandoned; its definition is unchanged"
                    raise Abandoned(message) from None
    finally:
        os.unlink(path)


def _editor() -> list[str]:
    command = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise InvalidArgument(f"cannot read the editor command {command!r}: {exc}") from None


def _run_editor(path: str) -> None:
    argv = _editor()
    if not argv:
        raise InvalidArgument("$VISUAL or $EDITOR is set but empty: name an editor, e.g. vi")
    try:
        status = subprocess.run([*argv, path], check=False).returncode
    except OSError as exc:
        raise InvalidArgument(
            f"cannot run the editor {argv[0]!r}: {exc.strerror}; set VISUAL or EDITOR"
        ) from None
    if status != 0:
        raise Abandoned(f"the editor {argv[0]!r} exited with status {status}; nothing changed")


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:  # the editor may have replaced the file: reopen it
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the edited file {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidArgument(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{path}: not UTF-8 text") from None


def _ask(question: str) -> bool:
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


# --- libvirt domain XML (`qumran dumpxml`, `qumran define --xml`) -------------------------


def read_xml(path: str) -> tuple[dict[str, Any], str | None]:
    """A libvirt domain XML file as a definition and its ``<uuid>`` (or None)."""
    from qumran.config import domxml

    try:
        with open(path, "rb") as f:  # bounded, as a definition file is
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidArgument(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        return domxml.parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidArgument(f"{path}: not a UTF-8 text file") from None
    except InvalidArgument as exc:
        raise InvalidArgument(f"{path}: {exc.message}") from None


def domain_xml(vm: VmInfo, host: Any, inactive: bool) -> str:
    """A VM as libvirt domain XML (the libvirt protocol's dumpxml gives the same)."""
    from qumran.config import domxml
    from qumran.config.validate import validate_spec

    spec = validate_spec(next_definition(vm) if inactive else vm["definition"])
    running = vm["pid"] is not None and not inactive
    accel = next((d["accelerator"] for d in host.get("drivers", []) if d["driver"] == "qemu"),
                 "qemu")  # fmt: skip
    return domxml.to_xml(vm["name"], vm["uuid"], spec, dom_id=vm["pid"] if running else None,
                         accelerator=accel)  # fmt: skip
