"""Mock hospitals: a client library that behaves like a hospital HIS on the
settlement interface, and the tools built on it (replay, conformance, load)."""
