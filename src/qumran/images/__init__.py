"""Guest images built from Debian packages: the demo guest and the pieces it is made of."""

from qumran.images.demo import READY_LINE, DemoImage, build_demo

__all__ = ["READY_LINE", "DemoImage", "build_demo"]
