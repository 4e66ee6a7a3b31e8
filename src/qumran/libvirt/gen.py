"""Generate Python codecs from libvirt's XDR interface definitions (``protocol/*.x``).

Run ``python -m qumran.libvirt.gen`` after replacing a ``.x`` file; it rewrites the
modules next to them (``remote.py``, ``virnet.py``, ``keepalive.py``), and a test checks
that what is committed is what this produces.

It reads the subset of the XDR language (RFC 4506 section 6) that libvirt's files use:
``const``, ``typedef``, ``enum``, ``struct`` and ``union ... switch``, declarations with
``[n]``, ``<n>``, ``<>`` and ``*``, rpcgen's ``unsigned char/short`` and ``%`` pass-through
lines (C for rpcgen, ignored here). Anything else stops it with the line it met.

Each struct becomes a ``NamedTuple`` (fields typed, in wire order) and a codec named
``xdr_<type>``; each constant and enum member a ``Final`` int; each procedure of the
program's ``*_procedure`` enum an entry of ``PROCEDURES`` with the codecs of its
``_args``/``_ret``/``_msg`` types (libvirt's naming convention, which its own generator
relies on too).
"""

from __future__ import annotations

import keyword
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent / "protocol"

# C constants the .x files use but define in libvirt's public headers.
EXTERNAL = {
    "VIR_UUID_BUFLEN": 16,  # include/libvirt/libvirt-host.h
    "VIR_SECURITY_MODEL_BUFLEN": 257,  # libvirt-host.h: (256 + 1)
    "VIR_SECURITY_LABEL_BUFLEN": 4097,  # libvirt-host.h: (4096 + 1)
    "VIR_SECURITY_DOI_BUFLEN": 257,  # libvirt-host.h: (256 + 1)
    # include/libvirt/libvirt-common.h: virTypedParameterType
    "VIR_TYPED_PARAM_INT": 1,
    "VIR_TYPED_PARAM_UINT": 2,
    "VIR_TYPED_PARAM_LLONG": 3,
    "VIR_TYPED_PARAM_ULLONG": 4,
    "VIR_TYPED_PARAM_DOUBLE": 5,
    "VIR_TYPED_PARAM_BOOLEAN": 6,
    "VIR_TYPED_PARAM_STRING": 7,
}


@dataclass(frozen=True)
class Source:
    """One .x file and what to generate from it."""

    x_file: str
    module: str
    program: str | None = None  # the constant naming the program number
    procedures: str | None = None  # the enum of procedures
    proc_prefix: str = ""  # REMOTE_PROC_
    type_prefix: str = ""  # remote_


SOURCES = (
    Source("virnetprotocol.x", "virnet"),
    Source("virkeepaliveprotocol.x", "keepalive", program="KEEPALIVE_PROGRAM",
           procedures="keepalive_procedure", proc_prefix="KEEPALIVE_PROC_",
           type_prefix="keepalive_"),
    Source("remote_protocol.x", "remote", program="REMOTE_PROGRAM",
           procedures="remote_procedure", proc_prefix="REMOTE_PROC_", type_prefix="remote_"),
)  # fmt: skip


class XParseError(Exception):
    pass


_TOKEN = re.compile(r"\s*(?:(0x[0-9a-fA-F]+|-?\d+)|([A-Za-z_][A-Za-z0-9_]*)|(.))", re.S)


def tokenize(text: str) -> list[tuple[str, int]]:
    """Tokens with their line numbers; comments and ``%`` lines dropped."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    text = re.sub(r"^%.*$", "", text, flags=re.M)
    out: list[tuple[str, int]] = []
    line = 1
    pos = 0
    while (m := _TOKEN.match(text, pos)) is not None and m.lastindex is not None:
        start = m.start(m.lastindex)
        line += text.count("\n", pos, start)
        if m.group(m.lastindex).strip():  # not the whitespace at the end of the file
            out.append((m.group(m.lastindex), line))
        pos = m.end()
    return out


@dataclass
class Decl:
    name: str | None  # None: void
    type: str = "void"  # a base type or a defined name
    kind: str = "plain"  # plain, fixed [n], var <n>, optional *
    size: str | None = None  # the bound, as written (a number or a constant)


@dataclass
class Module:
    consts: dict[str, int] = field(default_factory=dict)
    items: list[tuple[str, str, object]] = field(default_factory=list)  # (kind, name, body)
    enums: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


class Parser:
    def __init__(self, text: str, name: str) -> None:
        self.toks = tokenize(text)
        self.i = 0
        self.name = name
        self.mod = Module()

    def peek(self) -> str:
        return self.toks[self.i][0] if self.i < len(self.toks) else ""

    def next(self) -> str:
        if self.i >= len(self.toks):
            raise XParseError(f"{self.name}: unexpected end of file")
        tok = self.toks[self.i][0]
        self.i += 1
        return tok

    def expect(self, want: str) -> None:
        tok = self.next()
        if tok != want:
            line = self.toks[self.i - 1][1]
            raise XParseError(f"{self.name}:{line}: expected {want!r}, found {tok!r}")

    def value(self, tok: str) -> int:
        if re.fullmatch(r"0x[0-9a-fA-F]+|-?\d+", tok):
            return int(tok, 0)
        if tok in self.mod.consts:
            return self.mod.consts[tok]
        if tok in EXTERNAL:
            return EXTERNAL[tok]
        line = self.toks[self.i - 1][1]
        raise XParseError(f"{self.name}:{line}: unknown constant {tok!r}")

    def parse(self) -> Module:
        while self.i < len(self.toks):
            tok = self.next()
            if tok == "const":
                name = self.next()
                self.expect("=")
                self.mod.consts[name] = self.value(self.next())
                self.mod.items.append(("const", name, self.mod.consts[name]))
                self.expect(";")
            elif tok == "typedef":
                decl = self.decl()
                assert decl.name is not None
                self.mod.items.append(("typedef", decl.name, decl))
                self.expect(";")
            elif tok == "enum":
                self.enum(self.next())
            elif tok == "struct":
                name = self.next()
                self.expect("{")
                fields = []
                while self.peek() != "}":
                    fields.append(self.decl())
                    self.expect(";")
                self.expect("}")
                self.expect(";")
                self.mod.items.append(("struct", name, fields))
            elif tok == "union":
                self.union(self.next())
            else:
                line = self.toks[self.i - 1][1]
                raise XParseError(f"{self.name}:{line}: unexpected {tok!r}")
        return self.mod

    def enum(self, name: str) -> None:
        self.expect("{")
        members: list[tuple[str, int]] = []
        while True:
            member = self.next()
            self.expect("=")
            value = self.value(self.next())
            self.mod.consts[member] = value
            members.append((member, value))
            sep = self.next()
            if sep == "}":
                break
            if sep != ",":
                raise XParseError(f"{self.name}: enum {name}: expected ',' or '}}'")
        self.expect(";")
        self.mod.enums[name] = members
        self.mod.items.append(("enum", name, members))

    def union(self, name: str) -> None:
        self.expect("switch")
        self.expect("(")
        disc = self.decl()
        self.expect(")")
        self.expect("{")
        arms: list[tuple[int | None, Decl]] = []
        while self.peek() != "}":
            tok = self.next()
            if tok == "case":
                case: int | None = self.value(self.next())
            elif tok == "default":
                case = None
            else:
                raise XParseError(f"{self.name}: union {name}: unexpected {tok!r}")
            self.expect(":")
            arms.append((case, self.decl()))
            self.expect(";")
        self.expect("}")
        self.expect(";")
        self.mod.items.append(("union", name, (disc, arms)))

    def decl(self) -> Decl:
        tok = self.next()
        if tok == "void":
            return Decl(None)
        if tok == "unsigned":
            nxt = self.peek()
            if nxt in ("int", "hyper", "char", "short", "long"):
                self.next()
                typ = "unsigned " + ("int" if nxt in ("char", "short", "long") else nxt)
            else:
                typ = "unsigned int"
        elif tok in ("char", "short", "long"):
            typ = "int"
        elif tok == "struct":
            typ = self.next()
        else:
            typ = tok
        optional = False
        if self.peek() == "*":
            self.next()
            optional = True
        name = self.next()
        if optional:
            return Decl(name, typ, "optional")
        if self.peek() == "[":
            self.next()
            size = self.next()
            self.value(size)
            self.expect("]")
            return Decl(name, typ, "fixed", size)
        if self.peek() == "<":
            self.next()
            bound = None
            if self.peek() != ">":
                bound = self.next()
                self.value(bound)
            self.expect(">")
            return Decl(name, typ, "var", bound)
        return Decl(name, typ)


# --- emitting Python ---------------------------------------------------------------------

_BASE = {
    "int": ("int", "xdr.INT"),
    "unsigned int": ("int", "xdr.UINT"),
    "hyper": ("int", "xdr.HYPER"),
    "unsigned hyper": ("int", "xdr.UHYPER"),
    "bool": ("bool", "xdr.BOOL"),
    "double": ("float", "xdr.DOUBLE"),
    "float": ("float", "xdr.FLOAT"),
}


class Emitter:
    def __init__(self, mod: Module, src: Source) -> None:
        self.mod = mod
        self.src = src
        self.pytypes: dict[str, str] = {}  # defined type name -> Python annotation
        self.defined: set[str] = set()  # codecs emitted so far
        self.lines: list[str] = []

    def base(self, typ: str) -> tuple[str, str]:
        """(annotation, codec expression) of a named type, no decoration."""
        if typ in _BASE:
            return _BASE[typ]
        if typ in self.mod.enums:
            return "int", "xdr.INT"
        if typ not in self.pytypes:
            raise XParseError(f"{self.src.x_file}: unknown type {typ!r}")
        codec = f"xdr_{typ}"
        if typ not in self.defined:
            codec = f"xdr.Lazy(lambda: xdr_{typ})"
        return self.pytypes[typ], codec

    def bound(self, size: str | None) -> str:
        return "None" if size is None else size

    def decl(self, d: Decl) -> tuple[str, str]:
        """(annotation, codec expression) of a declaration."""
        if d.name is None:
            return "None", "xdr.VOID"
        if d.type == "string":
            if d.kind != "var":
                raise XParseError(f"{self.src.x_file}: string {d.name} needs <n> or <>")
            return "str", f"xdr.String({self.bound(d.size)})"
        if d.type == "opaque":
            if d.kind == "fixed":
                return "bytes", f"xdr.Opaque({d.size}, fixed=True)"
            if d.kind == "var":
                return "bytes", f"xdr.Opaque({self.bound(d.size)})"
            raise XParseError(f"{self.src.x_file}: opaque {d.name} needs [n] or <n>")
        ann, codec = self.base(d.type)
        if d.kind == "optional":
            return f"{ann} | None", f"xdr.Optional({codec})"
        if d.kind == "fixed":
            return f"list[{ann}]", f"xdr.Array({codec}, {d.size}, fixed=True)"
        if d.kind == "var":
            return f"list[{ann}]", f"xdr.Array({codec}, {self.bound(d.size)})"
        return ann, codec

    def emit(self) -> str:
        # Every type's annotation first: a struct may name a type defined after it.
        for kind, name, _ in self.mod.items:
            if kind == "struct":
                self.pytypes[name] = name
            elif kind == "union":
                self.pytypes[name] = "xdr.UnionValue"
            elif kind == "enum":
                self.pytypes[name] = "int"
        for kind, name, body in self.mod.items:
            if kind == "typedef":
                assert isinstance(body, Decl)
                self.pytypes[name] = self.decl_type_only(body)
        out = self.lines
        out += [
            f'"""libvirt\'s {self.src.x_file}, as Python codecs: generated by',
            f"``python -m qumran.libvirt.gen`` from protocol/{self.src.x_file}; do not edit.",
            '"""',
            "",
            "from __future__ import annotations",
            "",
            f"from typing import {'Any, ' if self.src.procedures else ''}Final, NamedTuple",
            "",
            "from qumran.libvirt import xdr",
            "",
        ]
        used_external = sorted(
            name for name in EXTERNAL if re.search(rf"\b{name}\b", self.source_text)
        )
        if used_external:
            out.append("# From libvirt's public headers (the .x file uses them).")
            out += [f"{name}: Final = {EXTERNAL[name]}" for name in used_external]
            out.append("")
        for kind, name, body in self.mod.items:
            getattr(self, f"emit_{kind}")(name, body)
            self.defined.add(name)
        self.emit_procedures()
        if any(len(line) > 100 for line in out):  # one line per declaration: long ones
            out.insert(out.index("from __future__ import annotations"), "# ruff: noqa: E501")
        return "\n".join(out).rstrip("\n") + "\n"

    source_text = ""

    def decl_type_only(self, d: Decl) -> str:
        # Annotations of typedefs, resolved in order (a typedef names earlier ones only).
        saved = set(self.defined)
        self.defined = set(self.pytypes)
        try:
            return self.decl(d)[0]
        finally:
            self.defined = saved

    def emit_const(self, name: str, value: object) -> None:
        self.lines.append(f"{name}: Final = {value}")

    def emit_enum(self, name: str, members: list[tuple[str, int]]) -> None:
        self.lines += ["", f"# enum {name}"]
        self.lines += [f"{member}: Final = {value}" for member, value in members]
        self.lines.append(f"xdr_{name}: Final = xdr.INT")

    def emit_typedef(self, name: str, d: Decl) -> None:
        ann, codec = self.decl(d)
        self.lines.append(f"xdr_{name}: Final[xdr.Codec[{ann}]] = {codec}")

    def emit_struct(self, name: str, fields: list[Decl]) -> None:
        self.lines += ["", "", f"class {name}(NamedTuple):"]
        codecs = []
        for d in fields:
            ann, codec = self.decl(d)
            assert d.name is not None
            self.lines.append(f"    {_field(d.name)}: {ann}")
            codecs.append(codec)
        if not fields:
            self.lines.append("    pass")
        self.lines.append("")
        self.lines.append("")
        joined = ", ".join(codecs)
        comma = "," if len(codecs) == 1 else ""
        self.lines.append(
            f"xdr_{name}: Final[xdr.Struct[{name}]] = xdr.Struct({name}, ({joined}{comma}))"
        )

    def emit_union(self, name: str, body: tuple[Decl, list[tuple[int | None, Decl]]]) -> None:
        disc, arms = body
        _, disc_codec = self.decl(disc)
        cases = []
        default = "None"
        for case, d in arms:
            _, codec = self.decl(d)
            if case is None:
                default = codec
            else:
                cases.append(f"{case}: {codec}")
        self.lines += [
            "",
            f"xdr_{name}: Final = xdr.Union({disc_codec}, {{{', '.join(cases)}}}, {default})",
        ]

    def emit_procedures(self) -> None:
        src = self.src
        if src.procedures is None or src.program is None:
            return
        out = self.lines
        out += [
            "",
            "",
            "class Procedure(NamedTuple):",
            '    """One procedure: its codecs (None: no arguments / no return value)."""',
            "",
            "    number: int",
            "    name: str",
            "    args: xdr.Codec[Any] | None",
            "    ret: xdr.Codec[Any] | None",
            "",
            "",
            f"PROGRAM: Final = {src.program}",
            f"PROTOCOL_VERSION: Final = {src.program.replace('_PROGRAM', '_PROTOCOL_VERSION')}",
            "PROCEDURES: Final[dict[int, Procedure]] = {",
        ]
        for member, value in self.mod.enums[src.procedures]:
            short = member.removeprefix(src.proc_prefix)
            base = src.type_prefix + short.lower()
            args = self.codec_if(base + "_args") or self.codec_if(base + "_msg")
            ret = self.codec_if(base + "_ret")
            out.append(f'    {value}: Procedure({member}, "{short}", {args}, {ret}),')
        out.append("}")

    def codec_if(self, name: str) -> str | None:
        return f"xdr_{name}" if name in self.pytypes else None


def _field(name: str) -> str:
    return name + "_" if keyword.iskeyword(name) else name


def generate(src: Source) -> str:
    text = (HERE / src.x_file).read_text()
    mod = Parser(text, src.x_file).parse()
    emitter = Emitter(mod, src)
    emitter.source_text = text
    return emitter.emit()


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for src in SOURCES:
        target = HERE / f"{src.module}.py"
        text = generate(src)
        if check:
            if not target.exists() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)} (run python -m qumran.libvirt.gen)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
