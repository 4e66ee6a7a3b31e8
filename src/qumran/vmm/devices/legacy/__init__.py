"""Legacy PC devices: what a stock Linux kernel expects to find on ISA ports.

Where they live (register each at ``base`` for ``length`` ports on the PioBus):

  device                      base    length  IRQ
  Serial16550 (COM1)          0x3F8   8       4 (edge)
  CmosRtc                     0x70    2       -
  I8042                       0x60    1       -   and again at 0x64, length 1
  AcpiPm                      0x600   9       SCI 9 (level)
  PciConfigStub (optional)    0xCF8   8       -   host bridge at 00:00.0, see pci_stub.py
"""

from qumran.vmm.devices.legacy.i8042 import I8042, I8042_COMMAND_PORT, I8042_DATA_PORT
from qumran.vmm.devices.legacy.pci_stub import PCI_CONFIG_BASE, PCI_CONFIG_PORTS, PciConfigStub
from qumran.vmm.devices.legacy.pm import PM_BASE, PM_LEN, AcpiPm
from qumran.vmm.devices.legacy.rtc import RTC_BASE, RTC_PORTS, CmosRtc
from qumran.vmm.devices.legacy.serial import COM1_BASE, COM1_IRQ, UART_PORTS, Serial16550

__all__ = [
    "COM1_BASE",
    "COM1_IRQ",
    "I8042",
    "I8042_COMMAND_PORT",
    "I8042_DATA_PORT",
    "PCI_CONFIG_BASE",
    "PCI_CONFIG_PORTS",
    "PM_BASE",
    "PM_LEN",
    "RTC_BASE",
    "RTC_PORTS",
    "UART_PORTS",
    "AcpiPm",
    "CmosRtc",
    "PciConfigStub",
    "Serial16550",
]
