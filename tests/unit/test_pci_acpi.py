"""The PCI root bridge in the DSDT, and the default GSI routes the MSI router keeps."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qumran.kvm import constants as k
from qumran.vmm.acpi import pci
from qumran.vmm.acpi.constants import PCI_MMIO_BASE, PCI_MMIO_END, pci_intx_gsi
from qumran.vmm.acpi.tables import build_dsdt
from qumran.vmm.devices.pci.kvm_routes import default_routes
from qumran.vmm.devices.pci.virtio_pci import BAR_SIZE


def test_descriptors_have_the_spec_lengths() -> None:
    word = pci.word_space(pci.RES_BUS, 0, 0, 0xFF)
    dword = pci.dword_space(pci.RES_MEMORY, 1, PCI_MMIO_BASE, PCI_MMIO_END)
    assert (word[0], int.from_bytes(word[1:3], "little"), len(word)) == (0x88, 13, 16)
    assert (dword[0], int.from_bytes(dword[1:3], "little"), len(dword)) == (0x87, 23, 26)
    assert int.from_bytes(dword[-4:], "little") == PCI_MMIO_END - PCI_MMIO_BASE + 1


def test_bars_fit_the_window_for_every_slot() -> None:
    assert PCI_MMIO_BASE + 32 * BAR_SIZE - 1 <= PCI_MMIO_END
    assert {pci_intx_gsi(s) for s in range(1, 32)} == set(range(16, 24))


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) not installed")
def test_iasl_reads_the_root_bridge(tmp_path: Path) -> None:
    aml = tmp_path / "dsdt.aml"
    aml.write_bytes(build_dsdt())
    subprocess.run(["iasl", "-d", str(aml)], check=True, capture_output=True)
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert "Device (PCI0)" in dsl and 'EisaId ("PNP0A03")' in dsl
    assert "WordBusNumber (ResourceProducer" in dsl
    assert "0xC0000000,         // Range Minimum" in dsl
    assert "0xFEBFFFFF,         // Range Maximum" in dsl
    assert "0x0CF8,             // Range Minimum" in dsl
    assert "Name (_PRT, Package (0x1F)" in dsl
    assert "0x0001FFFF," in dsl and "0x0011" in dsl  # slot 1 -> GSI 17


def test_default_routes_match_kvm_create_irqchip() -> None:
    routes = default_routes()
    ioapic = {
        (r.gsi, r.u.irqchip.pin) for r in routes if r.u.irqchip.irqchip == k.KVM_IRQCHIP_IOAPIC
    }
    pic = [r for r in routes if r.u.irqchip.irqchip != k.KVM_IRQCHIP_IOAPIC]
    assert ioapic == {(g, g) for g in range(24)}
    assert len(pic) == 16 and all(r.type == k.KVM_IRQ_ROUTING_IRQCHIP for r in routes)
    assert {(r.gsi, r.u.irqchip.irqchip, r.u.irqchip.pin) for r in pic if r.gsi in (3, 12)} == {
        (3, k.KVM_IRQCHIP_PIC_MASTER, 3),
        (12, k.KVM_IRQCHIP_PIC_SLAVE, 4),
    }
