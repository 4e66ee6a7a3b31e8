"""Generated from libvirt's .x files (README.md); see ``qumran.libvirt.gen``."""
