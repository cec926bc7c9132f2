"""The composition root: the only package that wires a Core and a Gateway
together (the embedded development stack)."""
