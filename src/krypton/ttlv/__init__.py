"""Pure TTLV codec: item model, tag and enumeration tables, encode/decode, framing.

Sans-I/O: bytes in, items out. Nothing here touches sockets, asyncio or ssl.
Submodules are imported explicitly (``krypton.ttlv.codec``, ``krypton.ttlv.tags``,
...); this package module imports nothing so that the error hierarchy in
``krypton.errors`` can depend on the generated tables without an import cycle.
"""
