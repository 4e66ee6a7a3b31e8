"""libvirt's remote protocol, served by qumrand for virsh, virt-manager and the libvirt
bindings (docs/libvirt.md).

``xdr`` (the codec), ``protocol/`` (libvirt's ``.x`` files and the modules ``gen``
makes from them), ``packet`` (framing), ``server`` (the socket, connections, keepalive),
``procedures/`` (each call on the Manager, a module per kind of object), ``console``
(the console stream), ``host`` (the host's description and counters), ``storagexml`` and
``netxml`` (pool, volume and network XML both ways; domain XML is
``qumran.config.domxml``), ``errors``, ``constants``.
"""
