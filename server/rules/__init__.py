"""The rules engine: pure functions over plain data (no gRPC, no SQL).

`eligibility.check_registration` decides whether a visit may settle;
`settlement.compute_settlement` computes the money.
"""
