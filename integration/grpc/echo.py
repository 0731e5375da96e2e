"""A gRPC node and a gRPC client for Outrigger's HTTP/2 tests, on grpcio from PyPI.

Methods pass raw bytes (no protobuf), so no code generation is needed:

  python3 echo.py serve PORT LABEL     an h2c gRPC node answering as LABEL
  python3 echo.py client TARGET AUTHORITY [CALLS]
                                       calls through TARGET (Outrigger) with AUTHORITY as the
                                       :authority (the service name) and prints one JSON object
                                       with what came back.
"""

import json
import sys
import time
from concurrent import futures

import grpc


def serve(port, label):
    def unary(request, context):
        context.set_trailing_metadata((("x-node", label),))
        return label.encode() + b":" + request

    def server_stream(request, context):
        for i in range(3):
            yield f"{label}:{i}".encode()

    def client_stream(requests, context):
        return label.encode() + b":" + b"+".join(requests)

    def bidi(requests, context):
        for r in requests:
            yield label.encode() + b":" + r

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: é")

    def slow(request, context):
        time.sleep(2)
        return b"late"

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def error(e):
    meta = {k: v for k, v in (e.trailing_metadata() or ())}
    return {"code": e.code().name, "details": e.details(), "cause": meta.get("x-outrigger-error", "")}


def client(target, authority, calls):
    out = {}
    with grpc.insecure_channel(target, options=[("grpc.default_authority", authority)]) as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        nodes = {}
        for _ in range(calls):
            reply, call = unary.with_call(b"hi", timeout=5)
            node = reply.split(b":")[0].decode()
            nodes[node] = nodes.get(node, 0) + 1
            out["trailer"] = dict(call.trailing_metadata()).get("x-node", "")
        out["unary"] = nodes
        out["server_stream"] = [m.decode() for m in ch.unary_stream("/test.Echo/ServerStream")(b"", timeout=5)]
        out["client_stream"] = ch.stream_unary("/test.Echo/ClientStream")(iter([b"a", b"b", b"c"]), timeout=5).decode()
        out["bidi"] = [m.decode() for m in ch.stream_stream("/test.Echo/Bidi")(iter([b"x", b"y"]), timeout=5)]
        try:
            ch.unary_unary("/test.Echo/Fail")(b"", timeout=5)
            out["fail"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["fail"] = error(e)
        try:
            ch.unary_unary("/test.Echo/Slow")(b"", timeout=0.3)
            out["slow"] = {"code": "OK"}
        except grpc.RpcError as e:
            out["slow"] = error(e)
    print(json.dumps(out), flush=True)


def unavailable(target, authority):
    with grpc.insecure_channel(target, options=[("grpc.default_authority", authority)]) as ch:
        try:
            ch.unary_unary("/test.Echo/Unary")(b"hi", timeout=5)
            print(json.dumps({"code": "OK"}), flush=True)
        except grpc.RpcError as e:
            print(json.dumps(error(e)), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 8)
    elif sys.argv[1] == "unavailable":
        unavailable(sys.argv[2], sys.argv[3])
