"""The uplink between a Gateway and the Krypton Core: gRPC over mutual TLS (DESIGN §5).

- :mod:`krypton.uplink.types`: the messages as frozen dataclasses (what both sides see);
- :mod:`krypton.uplink.client`: the gateway side (:class:`UplinkClient`, :class:`UplinkL3Source`);
- :mod:`krypton.uplink.service`: the Core side (:class:`CoreHandler`, :class:`UplinkServer`);
- :mod:`krypton.uplink.convert`: protobuf ↔ dataclasses, gRPC status ↔ Krypton errors;
- ``v1/``: ``uplink.proto`` and the stubs ``make proto`` generates from it.
"""
