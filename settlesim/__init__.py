"""settlesim: a gRPC stub, conformance suite and load kit for cross-province
outpatient chronic/special-disease (门诊慢特病) direct settlement."""

__version__ = "0.1.0"
