"""gRPC server reflection v1 (`grpc.reflection.v1.ServerReflection`) beside
v1alpha, for tools that ask v1 first (recent grpcurl, Postman).

grpcio-reflection ships v1alpha only. v1 is the same protocol under another
package name: the same messages with the same field numbers, so its bytes on
the wire are v1alpha's. The v1alpha servicer answers both; this module adds
the v1 service under its own name, and the v1 file to the descriptor pool so
that reflection can describe v1 itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_FILE_NAME = "grpc/reflection/v1/reflection.proto"


def _add_v1_file() -> None:
    """grpc/reflection/v1/reflection.proto in the default pool: v1alpha's file
    with the package renamed (its messages refer to each other by full name)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE_NAME)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _FILE_NAME, "grpc.reflection.v1"
    proto.options.Clear()
    for message in proto.message_type:
        for f in message.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace("v1alpha", "v1")
            method.output_type = method.output_type.replace("v1alpha", "v1")
    pool.Add(proto)


def enable_server_reflection(service_names: Sequence[str], server: Any) -> None:
    """Reflection v1alpha and v1 for `service_names` (both reflection services
    are added to the list), served on the event loop: its streams stay open as long as the
    client likes, and as synchronous handlers in the server's few threads for such handlers
    4 streams that never sent a request stalled every call served there (the check runs',
    DescribePlatform) for as long as they were held."""
    _add_v1_file()
    names = (*service_names, reflection.SERVICE_NAME, SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
