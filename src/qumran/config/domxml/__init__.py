"""libvirt's domain XML, both ways: a Qumran definition as ``<domain>``, and back.

Used by the libvirt protocol (``qumran.libvirt``: dumpxml, define) and by the CLI
(``qumran dumpxml``, ``qumran define --xml``), so it lives with the other definition
formats, in the config layer both may use.

Only what a Qumran VM can be is read; any element, attribute value or device Qumran does
not have is refused with its path (``devices/disk[2]/target@bus``: ...), never dropped.
What libvirt's XML has no place for (the native hypervisor, port forwards, cloud-init)
travels in ``<metadata>`` under Qumran's own namespace, so dumpxml -> define keeps it.

The XML is parsed with the standard library; a document with a DOCTYPE is refused
outright (entities are how a small document becomes a huge one, and a domain has none).
"""

from __future__ import annotations

from qumran.config.domxml.names import MACHINE, NS
from qumran.config.domxml.read import parse
from qumran.config.domxml.write import to_xml

__all__ = ["MACHINE", "NS", "parse", "to_xml"]
