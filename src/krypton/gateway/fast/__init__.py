"""The gateway's fast paths: Get and Create answered straight off the wire."""
