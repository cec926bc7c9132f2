"""The gateway's KMIP handlers: the dispatcher and what it runs at the gateway."""
