"""Generated code of the settlesim.v1 contract (see protos/generate.py)."""
