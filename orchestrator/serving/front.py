"""The HTTP front of a served repository: checks each request before tritonserver allocates for it.

tritonserver 2.51 has no limit on an HTTP request's size, and it sizes the buffer of an input sent as
JSON data by the shape the request declares, before it compares that with the data: a request declaring
[1, 1000000000, 16] FP32 with 32 values asks for 64 GB and ends the server with ``std::bad_alloc``
(measured; later releases check, 2.51 does not). gRPC rejects such a request, and an input sent as binary
data is checked against its byte size without that allocation (measured). So ``TritonServer`` binds
tritonserver's HTTP endpoint to a private port on 127.0.0.1, restricts its inference API there to a header
only this front sends (``FRONT_HEADER``, a secret per server), and serves the public HTTP port with this
front, which forwards every request unchanged after it has checked:

- the body: at most ``max_request_bytes`` (413), also once a gzip/deflate body is decompressed; a chunked
  body is read the same way;
- an inference request (``POST /v2/models/<m>[/versions/<v>]/infer``): its JSON header parses, and each
  input sent as JSON data has a shape of non-negative integers whose element count is the number of values
  it carries (400 otherwise, ``{"error": ...}`` as tritonserver answers). Inputs sent as binary data or
  from a shared-memory region (whose API is restricted to the control key) are left to tritonserver.

Given the models an app needs (``ready_models``), the front answers ``/v2/health/ready`` itself: 200 when
each of them is ready, 400 otherwise. tritonserver's own readiness is false while any model of the repository
loads or failed to load: for 2-4 s during every apply that loads a runner, and for good after an apply whose
failed load was rolled back (until that model is unloaded), while the app was served throughout.

The front runs as threads of the process that owns the server (one per client connection, each with its
own kept-alive connection to tritonserver).

gRPC (``GrpcFront``, ``TritonServer(grpc_front=True)``, as ``jigsaw serve`` runs it): tritonserver 2.51 takes a
gRPC message of up to 2 GiB (src/grpc/grpc_server.cc sets the limit to INT32_MAX; no flag changes it), and a
Python-backend model's inputs are then copied into its stub's shared-memory pool, which grows to hold them and
never shrinks: one 500 MB request to the CPU example raised the resident memory of tritonserver and its stubs
(shared memory counted in each process that maps it) from 0.4 to 3.3 GB for good (measured), and each graph
instance grows its own. A declared shape larger than the data is refused by tritonserver itself over gRPC
(INVALID_ARGUMENT "input byte size mismatch", measured). So the gRPC front
takes messages of at most ``max_request_bytes`` (gRPC's own check, from the message's length prefix before it
is read: RESOURCE_EXHAUSTED "Received message larger than max", with nothing allocated, measured) and
forwards every call unchanged, as bytes, with the client's metadata and deadline plus ``GRPC_FRONT_HEADER``
(tritonserver's gRPC inference answers that header only, on a private port). Its price is a Python hop per
call (``bench/front_door.py`` measures one such proxy: +1.4 ms p50 one request at a time, 0.72x the
throughput at concurrency 8 on the 2-core machine), so the library leaves it off by default (tests and
benchmarks that measure the runtime itself) and ``jigsaw serve`` turns it on.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Sequence

import grpc

FRONT_HEADER = "jigsaw-front-key"
# tritonserver 2.51 prefixes the header keys of a restricted gRPC protocol with "triton-grpc-protocol-"
GRPC_FRONT_HEADER = f"triton-grpc-protocol-{FRONT_HEADER}"
GRPC_STREAMS = {"/inference.GRPCInferenceService/ModelStreamInfer"}  # the service's one streaming method
GRPC_WORKERS = 128  # calls the gRPC front forwards at once (each holds a thread while tritonserver answers)
GRPC_MAX_MESSAGE = 2**31 - 1  # what tritonserver 2.51 sends back is its business (its own limit)
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer/?$")
# not forwarded either way (RFC 9110 7.6.1), plus what the front sets itself
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authenticate", "proxy-authorization", "host", "content-length", "expect", FRONT_HEADER}
UPSTREAM_TIMEOUT_S = 600.0
CLIENT_IDLE_S = 300.0


class Rejected(Exception):
    """A request the front answers itself: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _count_values(data: Any) -> int:
    """The number of scalar values in JSON ``data`` (nested lists flattened), without recursion."""
    count, stack = 0, [data]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        else:
            count += 1
    return count


def check_infer(body: bytes, header_length: int | None) -> None:
    """Raise ``Rejected`` (400) unless the JSON header of an inference request parses and each input sent
    as JSON data declares as many elements as it carries."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise Rejected(400, f"jigsaw: Inference-Header-Content-Length {header_length} is not within the "
                            f"body's {len(body)} bytes")
    try:
        doc = json.loads(body if header_length is None else body[:header_length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, f"jigsaw: the inference request's JSON does not parse: {exc}") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list):
        raise Rejected(400, "jigsaw: the inference request has no list of 'inputs'")
    for inp in inputs:
        if not isinstance(inp, dict):
            raise Rejected(400, "jigsaw: each of the request's 'inputs' must be an object")
        name, shape = inp.get("name"), inp.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise Rejected(400, f"jigsaw: input {name!r}: 'shape' must be a list of non-negative integers, "
                                f"got {json.dumps(shape)[:100]}")
        params = inp.get("parameters")
        if isinstance(params, dict) and ("binary_data_size" in params or "shared_memory_region" in params):
            continue  # tritonserver checks these against the shape without allocating by it
        elements = 1
        for d in shape:
            elements *= d
        values = _count_values(inp.get("data", []))
        if values != elements:
            raise Rejected(400, f"jigsaw: input {name!r}: shape {shape} has {elements} elements, its 'data' "
                                f"holds {values} values")


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded from gzip or deflate, at most ``limit`` bytes (413 beyond)."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise Rejected(415, f"jigsaw: unsupported Content-Encoding {encoding!r} (gzip or deflate)")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Rejected(400, f"jigsaw: the {encoding} body does not decode: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise Rejected(413, f"jigsaw: the request decompresses to more than {limit} bytes")
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # a reply's headers and body go out in two sends: with Nagle on, a kept-alive client's delayed ACK held
    # the body back about 40 ms (bench/results/front-door.md)
    disable_nagle_algorithm = True
    server: "_FrontServer"
    timeout = CLIENT_IDLE_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # no line per request on the serving process's stderr

    def setup(self) -> None:
        super().setup()
        self.upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.upstream is not None:
                self.upstream.close()

    def _reply(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        limit = self.server.max_request_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts, size = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    n = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    raise Rejected(400, "jigsaw: malformed chunked body") from None
                if n == 0:
                    while self.rfile.readline(1024).strip():  # trailers
                        pass
                    break
                size += n
                if size > limit:
                    self.close_connection = True
                    raise Rejected(413, f"jigsaw: request body over {limit} bytes")
                parts.append(self.rfile.read(n))
                self.rfile.readline(1024)
            return b"".join(parts)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise Rejected(400, "jigsaw: bad Content-Length") from None
        if length < 0 or length > limit:
            self.close_connection = True  # the body is not read: the connection cannot carry on
            raise Rejected(413, f"jigsaw: request body of {length} bytes, over the {limit} bytes this server takes")
        return self.rfile.read(length) if length else b""

    def _ready(self) -> None:
        """``/v2/health/ready``: whether every model the app needs now is ready (tritonserver's own answer
        when the server names none)."""
        try:
            models = self.server.ready_models() if self.server.ready_models else None
        except Exception:  # noqa: BLE001 (an unreadable routing file: tritonserver's answer)
            models = None
        if models is None:
            self._forward()
            return
        ready = True
        for model in models:
            try:
                response = self._upstream("GET", f"/v2/models/{model}/ready", b"",
                                          {FRONT_HEADER: self.server.front_key})
                response.read()
            except OSError:
                ready = False
                break
            if response.status != 200:
                ready = False
                break
        self.send_response(200 if ready else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path.split("?")[0].rstrip("/") == "/v2/health/ready":
            self._ready()
        else:
            self._forward()

    do_HEAD = do_GET

    def _forward(self) -> None:
        try:
            body = self._read_body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            encoding = self.headers.get("Content-Encoding", "").strip().lower()
            if encoding and encoding != "identity" and body:
                body = _decompress(body, encoding, self.server.max_request_bytes)
                headers = {k: v for k, v in headers.items() if k.lower() != "content-encoding"}
            if self.command == "POST" and INFER_PATH.match(self.path.split("?")[0]):
                raw = self.headers.get("Inference-Header-Content-Length")
                try:
                    header_length = int(raw) if raw is not None else None
                except ValueError:
                    raise Rejected(400, f"jigsaw: bad Inference-Header-Content-Length {raw!r}") from None
                check_infer(body, header_length)
        except Rejected as r:
            self._reply(r.status, r.message)
            return
        headers[FRONT_HEADER] = self.server.front_key
        headers["Content-Length"] = str(len(body))
        try:
            response = self._upstream(self.command, self.path, body, headers)
        except OSError:
            self._reply(503, "jigsaw: the inference server is not reachable")
            self.close_connection = True
            return
        self.send_response(response.status, response.reason)
        for k, v in response.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        length = response.getheader("Content-Length")
        if length is not None or self.command == "HEAD" or response.status in (204, 304):
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            data = response.read()
            if self.command != "HEAD":
                self.wfile.write(data)
        else:  # a stream (generate_stream): passed on chunk by chunk
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while chunk := response.read1(65536):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        if response.will_close:
            self.upstream.close()
            self.upstream = None

    def _upstream(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send the request to tritonserver on this connection's kept-alive connection (reopened once if
        tritonserver closed it meanwhile)."""
        for attempt in (0, 1):
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection(*self.server.upstream, timeout=UPSTREAM_TIMEOUT_S)
            try:
                self.upstream.request(method, path, body=body, headers=headers)
                return self.upstream.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.upstream.close()
                self.upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _forward


class _FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], front_key: str,
                 max_request_bytes: int, ready_models: Callable[[], Sequence[str] | None] | None) -> None:
        self.upstream, self.front_key, self.max_request_bytes = upstream, front_key, max_request_bytes
        self.ready_models = ready_models
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(listen, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class HttpFront:
    """The front on ``listen`` for tritonserver's HTTP endpoint at ``upstream``; ``start()`` binds the port
    and serves in a thread, ``stop()`` closes it and every connection (the client's and tritonserver's:
    tritonserver waits for open HTTP connections when it exits). ``ready_models()`` names the models whose
    readiness is the server's (None: tritonserver's own answer)."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], front_key: str,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 ready_models: Callable[[], Sequence[str] | None] | None = None) -> None:
        self.listen, self.upstream, self.front_key = listen, upstream, front_key
        self.max_request_bytes, self.ready_models = max_request_bytes, ready_models
        self._server: _FrontServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HttpFront:
        self._server = _FrontServer(self.listen, self.upstream, self.front_key, self.max_request_bytes,
                                    self.ready_models)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="jigsaw-http-front", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _GrpcForward(grpc.GenericRpcHandler):
    """Every method of tritonserver's gRPC service, forwarded as bytes over one channel to it."""

    def __init__(self, upstream: str, front_key: str, max_request_bytes: int) -> None:
        self.channel = grpc.insecure_channel(upstream, options=[
            ("grpc.max_send_message_length", max_request_bytes), ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
            # tritonserver starts after the front: retry its port soon, not after gRPC's backoff of up to 2 min
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)])
        self.front_key = front_key
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._lock = threading.Lock()

    def _metadata(self, context: grpc.ServicerContext) -> list[tuple[str, str | bytes]]:
        """The client's metadata less the key it may have sent itself, plus the front's key."""
        return [(k, v) for k, v in context.invocation_metadata() if k.lower() != GRPC_FRONT_HEADER] \
            + [(GRPC_FRONT_HEADER, self.front_key)]

    @staticmethod
    def _timeout(context: grpc.ServicerContext) -> float | None:
        left = context.time_remaining()
        return left if left is not None and left < 1e6 else None  # no deadline: a huge number

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        handler = self._handlers.get(method)  # built once per method: the lock only for the first call
        if handler is not None:
            return handler
        with self._lock:
            if method not in self._handlers:
                self._handlers[method] = self._stream(method) if method in GRPC_STREAMS else self._unary(method)
            return self._handlers[method]

    def _unary(self, method: str) -> grpc.RpcMethodHandler:
        call = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return call(request, metadata=self._metadata(context), timeout=self._timeout(context))
            except grpc.RpcError as exc:  # tritonserver's answer, as it gave it
                context.abort(exc.code(), exc.details() or "")
                raise  # not reached: abort raises

        return grpc.unary_unary_rpc_method_handler(forward, request_deserializer=None, response_serializer=None)

    def _stream(self, method: str) -> grpc.RpcMethodHandler:
        call = self.channel.stream_stream(method, request_serializer=None, response_deserializer=None)

        def forward(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            try:
                yield from call(requests, metadata=self._metadata(context), timeout=self._timeout(context))
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")

        return grpc.stream_stream_rpc_method_handler(forward, request_deserializer=None, response_serializer=None)


class GrpcFront:
    """The gRPC front on ``listen`` for tritonserver's gRPC endpoint at ``upstream`` (``host:port``): messages of
    at most ``max_request_bytes`` (larger ones: RESOURCE_EXHAUSTED, refused from their length prefix), every
    call forwarded with ``GRPC_FRONT_HEADER``. ``start()`` binds the port (an error when it is taken),
    ``stop()`` closes it."""

    def __init__(self, listen: tuple[str, int], upstream: str, front_key: str,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        self.listen, self.upstream, self.front_key, self.max_request_bytes = listen, upstream, front_key, max_request_bytes
        self._server: grpc.Server | None = None
        self._forward: _GrpcForward | None = None

    def start(self) -> GrpcFront:
        self._forward = _GrpcForward(self.upstream, self.front_key, self.max_request_bytes)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="jigsaw-grpc-front"),
                             handlers=[self._forward],
                             options=[("grpc.max_receive_message_length", self.max_request_bytes),
                                      ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                                      ("grpc.so_reuseport", 0)])
        host, port = self.listen
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            bound = 0
        if bound == 0:
            self._forward.channel.close()
            raise RuntimeError(f"gRPC front: cannot bind {host}:{port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None)
        if self._forward is not None:
            self._forward.channel.close()
            self._forward = None
