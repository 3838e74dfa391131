"""The standard gRPC health service, whose Watch streams end when the server drains.

gRPC's graceful stop waits for every open stream, and grpcio-health-checking's Watch never ends
by itself: one Watch held every drain for its whole grace (5 s). Here, once the server enters its
graceful shutdown, each Watch is told NOT_SERVING and ends (status OK); a watcher that
reconnects finds the server gone. Check, set and the shutdown are the library's own; Watch is
this module's, over the statuses `set` was given (a Watch ended from outside could not be told
its last status: its write raced the library's own, GRPC_CALL_ERROR_TOO_MANY_OPERATIONS).
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health, health_pb2

Status = health_pb2.HealthCheckResponse.ServingStatus


class DrainingHealth(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, Status] = {"": health_pb2.HealthCheckResponse.SERVING}  # as the library
        self._draining = False
        self._changed = asyncio.Condition()  # made on the server's loop, as the servicer is

    async def set(self, service: str, status: Status) -> None:
        await super().set(service, status)
        if not self._draining:  # the library ignores a set after the shutdown began, too
            await self._tell(service, status)

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._draining = True
        for service in self._statuses:
            await self._tell(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def _tell(self, service: str, status: Status) -> None:
        async with self._changed:
            self._statuses[service] = status
            self._changed.notify_all()

    def _status(self, service: str) -> Status:
        return self._statuses.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        told = None
        while True:
            async with self._changed:  # not held while writing: a slow watcher delays no set
                while self._status(request.service) == told and not self._draining:
                    await self._changed.wait()
                status = self._status(request.service)
            if status != told:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                told = status
            if self._draining:
                return
