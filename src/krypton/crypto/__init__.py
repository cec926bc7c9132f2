"""Key generation, L3 wrapping of L4 keys, and the gateway's L3 key ring."""
