"""Guest images built from Debian packages: the demo guest (``qumran.images.demo``) and
the pieces it is made of. Nothing is imported here: qumrand imports
``qumran.images.cloudinit`` for seeds and must not load the builders with it."""
