"""The reference settlement platform: world data, rules engine, ledger, gRPC server."""
