"""Reading libvirt's XML documents (domain, network, pool, volume) strictly.

Every reader in Qumran takes only what it knows: an element or attribute it has no place
for is refused with its path (``network/ip@family``), never dropped. The documents are
parsed with the standard library; one with a DOCTYPE is refused outright (entities are how
a small document becomes a huge one, and none of these documents has any).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from qumran.errors import InvalidArgument


class XmlUnsupported(InvalidArgument):
    """XML using something Qumran does not have (libvirt: VIR_ERR_CONFIG_UNSUPPORTED)."""


class XmlInvalid(InvalidArgument):
    """XML that is not the document asked for at all (libvirt: VIR_ERR_XML_ERROR)."""


def root(text: str, tag: str, limit: int) -> ET.Element:
    """The document element of ``text``, which must be a well-formed ``<tag>`` of at most
    ``limit`` bytes, without a DOCTYPE."""
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        raise XmlInvalid(f"the {tag} XML is over {limit} bytes")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise XmlInvalid(f"the {tag} XML has a DOCTYPE; a {tag} needs none, remove it")
    try:
        element = ET.fromstring(text)
    except ET.ParseError as exc:
        raise XmlInvalid(f"the {tag} XML is not well-formed: {exc}") from None
    if element.tag != tag:
        raise XmlInvalid(f"the document is <{element.tag}>, not a <{tag}>")
    return element


def children(el: ET.Element, path: str, allowed: set[str]) -> dict[str, ET.Element]:
    """``el``'s child elements by tag, each at most once; any other tag refused."""
    found: dict[str, ET.Element] = {}
    for child in el:
        if child.tag not in allowed:
            raise XmlUnsupported(f"{path}/{child.tag}: Qumran has no such setting; remove it")
        if child.tag in found:
            raise XmlInvalid(f"{path}/{child.tag}: given twice; Qumran takes one")
        found[child.tag] = child
    return found


def attrs(
    el: ET.Element, path: str, allowed: dict[str, set[str] | None], *, shown: str | None = None
) -> dict[str, str]:
    """``el``'s attributes; one not in ``allowed``, or with a value not among its allowed
    values (None: any value), refused. ``shown``: the path as the message gives it."""
    where = path if shown is None else shown
    for key, value in el.attrib.items():
        if key not in allowed:
            raise XmlUnsupported(f"{where}@{key}: Qumran has no such setting; remove it")
        values = allowed[key]
        if values is not None and value not in values:
            choices = ", ".join(sorted(values))
            raise XmlUnsupported(f"{where}@{key}={value!r}: Qumran supports only {choices}")
    return dict(el.attrib)


def required(found: dict[str, str], key: str, path: str) -> str:
    if key not in found:
        raise XmlInvalid(f"{path}@{key}: missing")
    return found[key]


def text(el: ET.Element | None, path: str) -> str:
    """The element's text, stripped; a missing element or an empty one refused."""
    value = (el.text or "").strip() if el is not None else ""
    if not value:
        raise XmlInvalid(f"{path}: missing")
    return value
