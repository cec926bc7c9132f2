"""TLS for both sides: SSL contexts from configuration and peer identities
(SPIFFE IDs), used by the gateway's KMIP listener and by the uplink."""
