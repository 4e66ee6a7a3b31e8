"""Snapshot and restore of a running qumran-vmm guest."""
