"""What the gateway's and the Core's handlers share: storage-free, transport-free, side-free.

The handlers themselves are ``krypton.gateway.engine`` (with the fast paths in
``krypton.gateway.fast``) and ``krypton.core.engine``.
"""
