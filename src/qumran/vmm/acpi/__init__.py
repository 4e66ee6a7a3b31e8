"""ACPI tables for qumran-vmm guests: a small AML encoder and the table builders.

``build_acpi_tables(base, num_cpus)`` returns an :class:`AcpiBlob` the VMM core copies into
guest memory; ``constants`` is the platform layout the tables and the devices share.
"""

from qumran.vmm.acpi.tables import AcpiBlob, build_acpi_tables

__all__ = ["AcpiBlob", "build_acpi_tables"]
