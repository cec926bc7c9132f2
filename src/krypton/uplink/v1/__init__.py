"""Generated uplink stubs (scripts/gen_proto.sh)."""
