"""Qumran: the KVM virtualization stack in Python.

Layers, top to bottom (imports only go down): ``cli``/``web`` -> ``client`` ->
``daemon`` -> ``drivers`` -> ``vmm`` -> ``kvm``; ``config``, ``errors`` and ``record`` are
shared.
"""

__version__ = "0.1.0"
