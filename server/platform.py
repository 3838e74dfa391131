"""PlatformService (protos/settlesim/v1/platform.proto): tells a caller which
world this server serves — its name and the digest of its files — so a replay
can say up front that its cases need another world (docs/cases.md)."""

from __future__ import annotations

import grpc
from settlesim.server.model import World
from settlesim.v1 import platform_pb2 as pb
from settlesim.v1 import platform_pb2_grpc as pb_grpc

from settlesim import __version__

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PlatformService"].full_name


class PlatformService(pb_grpc.PlatformServiceServicer):
    def __init__(self, world: World) -> None:
        self.answer = pb.DescribePlatformResponse(
            world_name=world.name, world_digest=world.digest, version=__version__
        )

    def DescribePlatform(
        self, request: pb.DescribePlatformRequest, context: grpc.ServicerContext
    ) -> pb.DescribePlatformResponse:
        return self.answer


def add_to_server(world: World, server: grpc.Server) -> str:
    """Registers the service; returns its name for reflection."""
    pb_grpc.add_PlatformServiceServicer_to_server(PlatformService(world), server)
    return SERVICE_NAME
