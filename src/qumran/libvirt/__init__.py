"""libvirt's remote protocol, served by qumrand for virsh, virt-manager and the libvirt
bindings (docs/libvirt.md).

``xdr`` (the codec), ``protocol/`` (libvirt's ``.x`` files and the modules ``gen``
makes from them), ``packet`` (framing), ``server`` (the socket, connections, keepalive),
``procedures`` (each call on the Manager), ``domxml`` (domain XML both ways), ``host``.
"""
