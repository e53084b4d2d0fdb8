"""The host's side of the runner protocol: generated stubs, bundle conversion, the client."""
