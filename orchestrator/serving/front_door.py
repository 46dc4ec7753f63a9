"""The cluster's front door: Triton's gRPC and HTTP inference protocols, each on one address, each call served by
one node.

Every node of a ``ClusterPlan`` serves the whole app with its own tritonserver, so a request needs one node
and no hop between nodes. Clients keep their plain ``tritonclient.grpc`` calls against one address; this
server implements Triton's ``GRPCInferenceService`` (the service that tritonclient's generated
``tritonclient.grpc.service_pb2`` describes; its ``service_pb2_grpc`` stub probes the nodes) and forwards each
call to one node's gRPC endpoint:

- ``ModelInfer`` goes to the node that smooth weighted round robin picks (``Balancer``: each node's weight is
  its planned share, ``ClusterPlan.share``), among the nodes that are up. The request goes on as the bytes that
  came, never parsed (its ``parameters`` too: a client's ``deadline_ns`` / ``deadline_ms`` reach the node's graph
  model; parsing and re-serialising measured no faster, ``bench/README.md``),
  with the client's headers and what is left of its gRPC deadline; the node's answer or error comes back as
  the node gave it. It is sent once: an inference may have run when its connection broke. Only a call the
  node's channel refused before sending it (``gRPC``'s "failed to connect") is tried on the next node.
- ``ModelReady``, ``ModelMetadata``, ``ModelConfig`` and ``ServerMetadata`` are idempotent: forwarded the
  same way, tried on each node that is up until one answers.
- ``ServerLive`` is the front door's own; ``ServerReady`` is true while a node with a share of the plan is up.
- Anything else (model control, shared memory, statistics, trace, logging, streaming) is a node's own
  business and answers UNIMPLEMENTED here: call a node.

The same door speaks Triton's HTTP/REST protocol on a second port (``http_port``; aiohttp, which Ray's
``ray[default]`` installs), for ``tritonclient.http``. Each request goes to a node's HTTP front
(``orchestrator/serving/front.py``, which keeps its size and shape checks), never to tritonserver's private port, picked
by the same ``Balancer``, so that gRPC and HTTP traffic together follow the planned shares:

- ``POST /v2/models/<m>[/versions/<v>]/infer`` is an inference, forwarded once as above: the body goes on as
  the bytes that came (its JSON header, so ``deadline_ms`` / ``deadline_ns`` parameters, unparsed), with the
  client's headers but the hop-by-hop ones; the node's status, headers and body come back as the node gave
  them. Only a node that could not be connected to is followed by the next; a node that broke off after the
  request was sent gives 502. The body is read whole first, at most the nodes' own limit (413 beyond).
- ``GET /v2``, ``GET /v2/models/<m>[/versions/<v>][/ready|/config]`` (server and model metadata, model ready,
  config) are tried on each node that is up until one answers.
- ``GET /v2/health/live`` is the door's own (200); ``GET /v2/health/ready`` is 200 while a node with a share is
  up, 400 otherwise (Triton's answer for "not ready").
- Anything else (model control, shared memory, statistics, trace, logging, generate) answers 403, as a node
  refuses it without its control key: call a node.
- A node's 503 (its front could not reach its tritonserver) has it probed at once; a read then tries the next.

A node is up while its gRPC ``ServerReady`` answers true; each is asked every ``health_s`` seconds, and at once
after a forwarded call met UNAVAILABLE (or could not connect, or broke off) there (a node gone is down within one
probe, not one period). With no node up, gRPC calls fail with UNAVAILABLE and HTTP requests with 503, both
saying "no node can answer".
"""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import aiohttp
import grpc
from aiohttp import web
from multidict import CIMultiDict
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .front import DEFAULT_MAX_REQUEST_BYTES, HOP_BY_HOP, INFER_PATH, UPSTREAM_TIMEOUT_S

# what a grpc channel says when it could not send the call at all (grpc core's message for a channel that
# cannot connect): safe to try the next node, the request never left
NOT_SENT = "failed to connect"
# Triton's own clients allow messages up to 2 GiB (tritonclient.grpc: INT32_MAX): answers may be that large.
# Requests are not: tritonserver copies a request whole into the graph stub's shared memory, which never shrinks,
# so the door refuses one over the nodes' HTTP limit from its length prefix (RESOURCE_EXHAUSTED), as `jigsaw
# serve`'s gRPC front does, before anything is allocated for it
MAX_MESSAGE = 2**31 - 1
SERVER_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE),
                  ("grpc.max_receive_message_length", DEFAULT_MAX_REQUEST_BYTES)]
CHANNEL_OPTIONS = [("grpc.max_send_message_length", DEFAULT_MAX_REQUEST_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE)]
PROBE_TIMEOUT_S = 1.0
# headers of the client's call that are the transport's, not the client's: not passed on
TRANSPORT_HEADERS = ("grpc-", ":")
NO_NODE = "no node can answer: every node of the cluster is down or has no share of the plan"
SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# forwarded as the bytes that came (no parse, no re-serialisation: the message reaches the node as sent)
FORWARDED = ("ModelInfer", "ModelReady", "ModelMetadata", "ModelConfig", "ServerMetadata")
# HTTP reads forwarded (GET): server metadata; a model's metadata, readiness, config ("stats" is the statistics API)
HTTP_READ_PATH = re.compile(r"^/v2/?$|^/v2/models/(?!stats/?$)[^/]+(/versions/[^/]+)?(/ready|/config)?/?$")
HTTP_REFUSED = ("jigsaw front door: this API is restricted to a node (model control, shared memory, statistics, "
                "trace and logging need its control key): call the node's own HTTP front")
HTTP_CONNECT_TIMEOUT_S = 5.0
STOP_GRACE_S = 1.0  # what calls in flight get when the door stops


class Route(NamedTuple):
    """Where a node answers (gRPC and HTTP ``host:port``) and its weight (planned share)."""

    grpc: str
    http: str
    weight: float


class Balancer:
    """Smooth weighted round robin (nginx's): over any run of picks each node gets its weight's share,
    spread out rather than in bursts. Nodes not in ``up`` are skipped and their turn is not counted."""

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights: dict[str, float] = {}
        self._current: dict[str, float] = {}
        self.set_weights(weights or {})

    def set_weights(self, weights: dict[str, float]) -> None:
        """Replace the weights (non-positive ones drop out); the round starts afresh."""
        self.weights = {n: float(w) for n, w in weights.items() if w > 0}
        self._current = dict.fromkeys(self.weights, 0.0)

    def pick(self, up: set[str] | frozenset[str], skip: set[str] | frozenset[str] = frozenset()) -> str | None:
        """The next node among ``up`` minus ``skip``; None when none of them has a weight."""
        eligible = [n for n in self.weights if n in up and n not in skip]
        if not eligible:
            return None
        total = 0.0
        for n in eligible:
            self._current[n] += self.weights[n]
            total += self.weights[n]
        best = max(eligible, key=lambda n: self._current[n])
        self._current[best] -= total
        return best


@dataclass
class _Node:
    name: str
    url: str
    http: str  # the node's HTTP front, host:port
    channel: grpc.aio.Channel
    stub: service_pb2_grpc.GRPCInferenceServiceStub  # the node's health (ServerReady)
    calls: dict[str, Any]  # FORWARDED method -> bytes-in, bytes-out multicallable
    up: bool = False
    requests: int = 0  # inferences forwarded (gRPC ModelInfer and HTTP infer)
    failed: int = 0  # ... that came back with an error
    probing: asyncio.Task | None = field(default=None, repr=False)


class FrontDoor:
    """A grpc.aio server on ``host:port`` and an aiohttp server on ``host:http_port`` (0: any free port)
    forwarding to ``nodes`` (name -> ``Route``). Create, ``start`` and ``stop`` it on one event loop."""

    def __init__(self, nodes: dict[str, Route], host: str = "127.0.0.1", port: int = 0, http_port: int = 0,
                 health_s: float = 0.5) -> None:
        self.host, self.port, self.http_port, self.health_s = host, port, http_port, health_s
        self.balancer = Balancer()
        self._nodes: dict[str, _Node] = {}
        self._retired: list[_Node] = []
        self._server: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._health: asyncio.Task | None = None
        self._initial = nodes
        self.arrivals = 0  # inferences received (gRPC and HTTP), whether or not a node took them (the demand)

    @property
    def url(self) -> str:
        """``host:port`` of the front door's gRPC side (tritonclient.grpc form)."""
        return f"{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """``host:port`` of the front door's HTTP side (tritonclient.http form, no scheme)."""
        return f"{self.host}:{self.http_port}"

    async def start(self) -> str:
        """Serve gRPC and HTTP; returns ``url`` once every node was probed once."""
        handlers = {name: grpc.unary_unary_rpc_method_handler(partial(self._forward, name, name != "ModelInfer"))
                    for name in FORWARDED}
        handlers["ServerLive"] = grpc.unary_unary_rpc_method_handler(
            self._live, request_deserializer=service_pb2.ServerLiveRequest.FromString,
            response_serializer=service_pb2.ServerLiveResponse.SerializeToString)
        handlers["ServerReady"] = grpc.unary_unary_rpc_method_handler(
            self._ready, request_deserializer=service_pb2.ServerReadyRequest.FromString,
            response_serializer=service_pb2.ServerReadyResponse.SerializeToString)
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
        self.port = self._server.add_insecure_port(f"{self.host}:{self.port}")
        # the node's answer passes as it came: no decompression, no headers of the door's own
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=HTTP_CONNECT_TIMEOUT_S,
                                          sock_read=UPSTREAM_TIMEOUT_S),
            auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"))
        app = web.Application(client_max_size=DEFAULT_MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{path:.*}", self._http_forward)
        # the body goes on as it came, compressed or not, with its Content-Encoding: the node's front decompresses
        # it under its own size check
        self._http = web.AppRunner(app, access_log=None, shutdown_timeout=STOP_GRACE_S, auto_decompress=False)
        await self._http.setup()
        site = web.TCPSite(self._http, self.host, self.http_port)
        await site.start()
        self.http_port = self._http.addresses[0][1]
        await self.set_nodes(self._initial)
        await self._server.start()
        self._health = asyncio.create_task(self._watch())
        return self.url

    async def set_nodes(self, nodes: dict[str, Route], drain_s: float = 0.0) -> None:
        """Serve ``nodes`` from now on. A node kept at the same urls keeps its channel; the channel of a node
        dropped (or moved) is closed after ``drain_s``, when the calls still on it have finished."""
        for name, node in list(self._nodes.items()):
            if name not in nodes or (nodes[name].grpc, nodes[name].http) != (node.url, node.http):
                del self._nodes[name]
                self._retire(node, drain_s)
        for name, route in nodes.items():
            if name not in self._nodes:
                channel = grpc.aio.insecure_channel(route.grpc, options=CHANNEL_OPTIONS)
                calls = {m: channel.unary_unary(f"/{SERVICE.full_name}/{m}") for m in FORWARDED}
                self._nodes[name] = _Node(name, route.grpc, route.http, channel,
                                          service_pb2_grpc.GRPCInferenceServiceStub(channel), calls)
        self.balancer.set_weights({n: r.weight for n, r in nodes.items()})
        await asyncio.gather(*(self._probe(n) for n in list(self._nodes.values())))

    def _retire(self, node: _Node, drain_s: float) -> None:
        self._retired.append(node)

        async def close() -> None:
            await asyncio.sleep(drain_s)
            await node.channel.close()
            self._retired.remove(node)
        asyncio.get_running_loop().create_task(close())

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per node: url (gRPC), HTTP url, weight, whether it is up, inferences forwarded and failed."""
        return {n.name: {"url": n.url, "http": n.http, "weight": self.balancer.weights.get(n.name, 0.0), "up": n.up,
                         "requests": n.requests, "failed": n.failed} for n in self._nodes.values()}

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop serving (gRPC calls in flight get ``grace_s``, HTTP requests ``STOP_GRACE_S``) and close every
        channel and connection."""
        if self._health:
            self._health.cancel()
        if self._server:
            await self._server.stop(grace_s)
        if self._http:
            await self._http.cleanup()  # requests in flight get STOP_GRACE_S
        if self._session:
            await self._session.close()
        for node in [*self._nodes.values(), *self._retired]:
            await node.channel.close()

    async def _watch(self) -> None:
        """Probe every node each ``health_s``; a probe that fails otherwise than by the node's answer (its channel
        closed under it as the node was retired) must not end the watch, or a node marked down stays down."""
        while True:
            await asyncio.sleep(self.health_s)
            await asyncio.gather(*(self._probe(n) for n in list(self._nodes.values())), return_exceptions=True)

    async def _probe(self, node: _Node) -> None:
        try:
            answer = await node.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=PROBE_TIMEOUT_S)
            node.up = answer.ready
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            node.up = False

    def _suspect(self, node: _Node) -> None:
        """Probe ``node`` now (once at a time): it just answered UNAVAILABLE."""
        if node.probing is None or node.probing.done():
            node.probing = asyncio.get_running_loop().create_task(self._probe(node))

    def _up(self) -> set[str]:
        return {n.name for n in self._nodes.values() if n.up}

    async def _forward(self, method: str, idempotent: bool, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        headers = tuple((k, v) for k, v in context.invocation_metadata() or ()
                        if not k.startswith(TRANSPORT_HEADERS) and k != "user-agent")
        infer = method == "ModelInfer"
        self.arrivals += infer
        tried: set[str] = set()
        while True:
            name = self.balancer.pick(self._up(), tried)
            if name is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, NO_NODE)
            node = self._nodes[name]
            tried.add(name)
            if infer:
                node.requests += 1
            try:
                return await node.calls[method](request, timeout=context.time_remaining(), metadata=headers)
            except grpc.aio.AioRpcError as exc:
                if infer:
                    node.failed += 1
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self._suspect(node)
                    if idempotent or NOT_SENT in (exc.details() or ""):
                        continue
                await context.abort(exc.code(), exc.details() or "")

    async def _live(self, request: service_pb2.ServerLiveRequest,
                    context: grpc.aio.ServicerContext) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    def _serving(self) -> bool:
        """Whether a node with a share is up."""
        return bool(self._up() & set(self.balancer.weights))

    async def _ready(self, request: service_pb2.ServerReadyRequest,
                     context: grpc.aio.ServicerContext) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self._serving())

    async def _http_forward(self, request: web.Request) -> web.Response:
        """One HTTP request: answered here (health, refused, no node) or forwarded to one node's HTTP front."""
        path = request.path
        if request.method == "GET" and path.rstrip("/") == "/v2/health/live":
            return web.Response(status=200)
        if request.method == "GET" and path.rstrip("/") == "/v2/health/ready":
            return web.Response(status=200 if self._serving() else 400)
        infer = request.method == "POST" and INFER_PATH.match(path) is not None
        if not infer and not (request.method == "GET" and HTTP_READ_PATH.match(path)):
            return _http_error(403, HTTP_REFUSED)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _http_error(413, f"jigsaw front door: request body over {DEFAULT_MAX_REQUEST_BYTES} bytes")
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        assert self._session is not None
        self.arrivals += infer
        tried: set[str] = set()
        while True:
            name = self.balancer.pick(self._up(), tried)
            if name is None:
                return _http_error(503, NO_NODE)
            node = self._nodes[name]
            tried.add(name)
            if infer:
                node.requests += 1
            try:
                async with self._session.request(request.method, f"http://{node.http}{request.path_qs}",
                                                 data=body, headers=headers) as answer:
                    data = await answer.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if infer:
                    node.failed += 1
                self._suspect(node)
                if not infer or isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
                    continue
                return _http_error(502, f"jigsaw front door: node {name} broke off the request: "
                                        f"{type(exc).__name__}: {exc}")
            if infer and answer.status >= 400:
                node.failed += 1
            if answer.status == 503:
                self._suspect(node)
                if not infer:
                    continue
            out = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP)
            return web.Response(status=answer.status, reason=answer.reason, headers=out, body=data)


def _http_error(status: int, message: str) -> web.Response:
    """An error answered by the front door itself, in Triton's form (``{"error": ...}``)."""
    return web.Response(status=status, body=json.dumps({"error": message}).encode(), content_type="application/json")
