"""The grpc.aio server: genserve.v1.Genserve, standard health checking, server reflection,
and the Open Inference Protocol when service.grpc.inference provides it.

`build_grpc_server` only builds and binds; the caller starts it on the event
loop that also runs uvicorn, and stops it (health turns NOT_SERVING first).
With settings.api_keys_file, calls need a key (service.grpc.auth); with
settings.tls_cert and tls_key, the port serves TLS only.
"""

import asyncio
import logging
from collections import Counter
from contextlib import contextmanager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from service.credentials import api_keys, tls_pair
from service.grpc.auth import AuthInterceptor
from service.grpc.genserve_servicer import add_genserve_servicer
from service.grpc.handlers import AroundEveryCall
from service.grpc.request_id import answering_with_id
from service.in_flight import InFlight
from service.settings import Settings

log = logging.getLogger("genserve.grpc")

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name  # "grpc.health.v1.Health"
WATCH_POLL_S = 1.0


class EngineHealth(HealthServicer):
    """grpc.health.v1.Health that tells the engine's readiness: SERVING when engine.ready(), else NOT_SERVING.

    Check asks the engine on every call; Watch polls it while the watch is open.
    After enter_graceful_shutdown() every service stays NOT_SERVING (drain).
    """

    def __init__(self, engine: Any, services: list[str], poll_s: float = WATCH_POLL_S):
        super().__init__()
        self.engine = engine
        self.services = ["", *services]
        self.poll_s = poll_s

    def _status(self) -> int:
        try:
            ready = bool(self.engine.ready())
        except Exception:
            log.exception("engine.ready() failed; reporting NOT_SERVING")
            ready = False
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING

    async def refresh(self) -> None:
        status = self._status()
        for service in self.services:
            await self.set(service, status)  # ignored once shutting down

    async def Check(self, request, context):
        if request.service not in self.services:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"service: unknown service {request.service!r}")
        await self.refresh()
        return await super().Check(request, context)

    async def Watch(self, request, context):
        await self.refresh()
        poller = asyncio.ensure_future(self._poll())
        try:
            await super().Watch(request, context)
        finally:
            poller.cancel()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self.refresh()


class CallsInFlight(InFlight):
    """Tracks the calls in flight by method, so that a drain cut short can say what it cut."""

    def __init__(self) -> None:
        super().__init__()
        self.methods: Counter[str] = Counter()

    @contextmanager
    def tracked(self, method: str):
        """The call counted while it runs."""
        self.methods[method] += 1
        self.started()
        try:
            yield
        finally:
            self.methods[method] -= 1
            if not self.methods[method]:
                del self.methods[method]
            self.ended(len(self.methods))


def around_every_call(calls: CallsInFlight):
    """What runs around each call: its request id, then its count in flight."""
    @contextmanager
    def around(method: str, context):
        with answering_with_id(context), calls.tracked(method):
            yield
    return around


def _add_inference(server: AroundEveryCall, engine: Any) -> str:
    """The Open Inference Protocol servicer (inference.GRPCInferenceService)."""
    from service.grpc.inference import add_inference_servicer

    return add_inference_servicer(server, engine)


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}"


def _tls_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    pair = tls_pair(settings)
    if pair is None:
        return None
    cert, key = (path.read_bytes() for path in pair)
    return grpc.ssl_server_credentials([(key, cert)])


def build_grpc_server(engine: Any, settings: Settings, port: int) -> grpc.aio.Server:
    """A grpc.aio server over `engine`, bound to settings.host:port (0: any free port) but not started.

    The port actually bound is `server.genserve_port`; the health servicer is
    `server.genserve_health` (await its enter_graceful_shutdown() before a drain);
    `server.genserve_calls` tracks the calls in flight. A keys file or TLS pair that
    cannot be used raises service.credentials.CredentialsError.
    """
    keys, calls = api_keys(settings), CallsInFlight()
    server = grpc.aio.server(interceptors=[] if keys is None else [AuthInterceptor(keys)], options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared socket
    ])  # a call refused for its key is not counted in flight: its handler is the interceptor's, not wrapped
    wrapping = AroundEveryCall(server, around_every_call(calls))
    services = [add_genserve_servicer(wrapping, engine, settings), _add_inference(wrapping, engine)]
    health = EngineHealth(engine, services)
    health_pb2_grpc.add_HealthServicer_to_server(health, wrapping)
    names = [*services, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(ReflectionServicer(names), wrapping)
    wrapping.check_all_wrapped()
    address = _address(settings.host, port)
    credentials = _tls_credentials(settings)
    bound = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    if not bound:
        raise RuntimeError(f"gRPC: cannot bind {address}")
    server.genserve_port = bound
    server.genserve_health = health
    server.genserve_calls = calls
    log.info("gRPC on %s%s: %s", _address(settings.host, bound), "" if credentials is None else " (TLS)",
             ", ".join(services))
    return server
