"""The national JSON door (国家医保信息平台接口): the envelope, the visit flow, on the same engine as gRPC."""
