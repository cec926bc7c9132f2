"""Gateway: listener, sessions, dispatcher, identity, policy and TLS."""
