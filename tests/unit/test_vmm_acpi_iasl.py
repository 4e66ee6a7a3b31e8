"""ACPICA's own tools accept our tables: iasl disassembles each, acpiexec runs the DSDT.

Needs Debian ``acpica-tools`` (iasl, acpiexec); skipped when they are not installed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from qumran.vmm.acpi import build_acpi_tables

IASL = shutil.which("iasl")
ACPIEXEC = shutil.which("acpiexec")
pytestmark = pytest.mark.skipif(IASL is None, reason="iasl missing: apt-get install acpica-tools")

# iasl cannot load a bare RSDP (it has no table header); tests/unit/test_vmm_acpi_tables.py
# checks it field by field.
SIGNATURES = ["XSDT", "FACP", "APIC", "DSDT", "FACS"]


def write_tables(tmp_path: Path, cpus: int) -> dict[str, Path]:
    blob = build_acpi_tables(0xE0000, cpus)
    files = {}
    for sig in SIGNATURES:
        off = blob.tables[sig] - blob.base
        (length,) = struct.unpack_from("<I", blob.data, off + 4)
        path = tmp_path / f"{sig.lower()}.dat"
        path.write_bytes(blob.data[off : off + length])
        files[sig] = path
    return files


def run(tool: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


@pytest.mark.parametrize("cpus", [1, 4])
@pytest.mark.parametrize("sig", SIGNATURES)
def test_iasl_disassembles_without_complaint(tmp_path: Path, sig: str, cpus: int) -> None:
    assert IASL is not None
    path = write_tables(tmp_path, cpus)[sig]
    out = run(IASL, "-d", path.name, cwd=tmp_path)
    for word in ("Error", "Warning", "does not contain a valid"):
        assert word not in out, out
    dsl = path.with_suffix(".dsl").read_text()
    assert "**** " not in dsl  # how iasl flags fields it could not decode
    if sig == "APIC":
        assert dsl.count("[Processor Local APIC]") == cpus


def test_disassembled_dsdt_recompiles_cleanly(tmp_path: Path) -> None:
    assert IASL is not None
    path = write_tables(tmp_path, 1)["DSDT"]
    run(IASL, "-d", path.name, cwd=tmp_path)
    dsl = path.with_suffix(".dsl")
    assert "Name (_S5, Package (0x04)" in dsl.read_text()
    out = run(IASL, "-p", "recompiled", dsl.name, cwd=tmp_path)
    assert "0 Errors" in out, out
    assert (tmp_path / "recompiled.aml").read_bytes()[36:] == path.read_bytes()[36:]


@pytest.mark.skipif(ACPIEXEC is None, reason="acpiexec missing")
def test_acpiexec_loads_the_dsdt_and_evaluates_s5_and_com1(tmp_path: Path) -> None:
    assert ACPIEXEC is not None
    path = write_tables(tmp_path, 1)["DSDT"]
    out = run(ACPIEXEC, "-b", "Evaluate \\_S5; Evaluate \\_SB.COM1._CRS", path.name, cwd=tmp_path)
    assert "Contains 4 Elements" in out, out
    assert "[Integer] = 0000000000000005" in out
    assert "47 01 F8 03 F8 03 01 08" in out.upper(), out
    assert "AE_" not in out.replace("AE_OK", ""), out
