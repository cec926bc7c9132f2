"""The ``krypton`` command."""
