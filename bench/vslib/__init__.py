"""The pieces of ``bench/vs_libvirt.py``: one module per stack, timing helpers, the report."""
