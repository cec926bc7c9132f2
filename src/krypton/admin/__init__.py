"""The admin endpoint each process serves: health, readiness, metrics and a
status page (:mod:`krypton.admin.server`), for the gateway and the Core alike.
Each side supplies what it shows through a :class:`krypton.admin.server.Source`."""
