#!/usr/bin/env python3
"""A grpcurl-style client built only on server reflection (grpcio-reflection, which speaks
grpc.reflection.v1alpha). It knows nothing about trainfleet: it learns every type from the server,
which is what the end-to-end tests need to prove about the coordinator.

    reflect.py ADDR list                      services, one per line
    reflect.py ADDR describe SYMBOL           a service or message, with its comments
    reflect.py ADDR call SERVICE/METHOD JSON  call a method with a JSON body
    reflect.py ADDR spread N SERVICE/METHOD JSON
                                              call a unary method N times on one channel that
                                              balances round robin over every address ADDR's
                                              name resolves to (as a Kubernetes Service spreads
                                              connections over its pods); a list of
                                              {"metadata": {...}, "response": {...}}

TLS: with TRAINFLEET_CA_CERT (a PEM file) the channel is TLS, trusting that CA (like grpcurl
-cacert); TRAINFLEET_TLS_CERT and TRAINFLEET_TLS_KEY add a client certificate (grpcurl -cert
-key). Without it the channel is plaintext (grpcurl -plaintext).

Output is JSON for `call`: the response of a unary method, a list of the messages of a server
stream. The response's initial metadata goes to stderr as one line, `metadata: {JSON}`. An RPC
error prints {"code": ..., "message": ...} and exits 3.
"""
import gc
import json
import os
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE_FIELD = 6  # FileDescriptorProto.service
MESSAGE_FIELD = 4  # FileDescriptorProto.message_type
METHOD_FIELD = 2  # ServiceDescriptorProto.method
FIELD_FIELD = 2  # DescriptorProto.field


def comment_lines(note, indent):
    return [f"{indent}// {line}".rstrip() for line in note.splitlines()] if note else []


def field_type(f):
    if f.type_name:
        name = f.type_name
    else:
        name = descriptor_pb2.FieldDescriptorProto.Type.Name(f.type)[len("TYPE_"):].lower()
    repeated = f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    return ("repeated " if repeated else "") + name


def describe(reflection, symbol):
    """Like `grpcurl describe`: the element as proto source, with the comments the server sent."""
    file_proto = reflection.FindFileContainingSymbol(symbol)
    notes = {tuple(l.path): l.leading_comments.strip() for l in file_proto.source_code_info.location}
    short = symbol[len(file_proto.package) + 1 :]
    for si, service in enumerate(file_proto.service):
        if service.name == short:
            out = [f"{symbol} is a service:"] + comment_lines(notes.get((SERVICE_FIELD, si)), "")
            out.append(f"service {service.name} {{")
            for mi, m in enumerate(service.method):
                out += comment_lines(notes.get((SERVICE_FIELD, si, METHOD_FIELD, mi)), "  ")
                stream = "stream " if m.server_streaming else ""
                out.append(f"  rpc {m.name} ( {m.input_type} ) returns ( {stream}{m.output_type} );")
            return "\n".join(out + ["}"])
    for mi, message in enumerate(file_proto.message_type):
        if message.name == short:
            out = [f"{symbol} is a message:"] + comment_lines(notes.get((MESSAGE_FIELD, mi)), "")
            out.append(f"message {message.name} {{")
            for fi, f in enumerate(message.field):
                out += comment_lines(notes.get((MESSAGE_FIELD, mi, FIELD_FIELD, fi)), "  ")
                out.append(f"  {field_type(f)} {f.name} = {f.number};")
            return "\n".join(out + ["}"])
    raise KeyError(f"symbol not found: {symbol}")


def prepare(pool, full_method, body):
    """The path, the parsed request and the codec of SERVICE/METHOD with a JSON body."""
    service_name, method_name = full_method.split("/")
    method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = json_format.Parse(body, request_class())
    codec = dict(
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return f"/{service_name}/{method_name}", request, (codec, method.server_streaming)


def call_method(channel, pool, full_method, body):
    path, request, (codec, streaming) = prepare(pool, full_method, body)
    if streaming:
        stream = channel.unary_stream(path, **codec)(request, timeout=60)
        print(f"metadata: {json.dumps(dict(stream.initial_metadata()))}", file=sys.stderr)
        messages = [json.loads(json_format.MessageToJson(m)) for m in stream]
        print(json.dumps(messages, indent=1))
    else:
        response, call = channel.unary_unary(path, **codec).with_call(request, timeout=30)
        print(f"metadata: {json.dumps(dict(call.initial_metadata()))}", file=sys.stderr)
        print(json_format.MessageToJson(response))


class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
             grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer $TRAINFLEET_TOKEN` to every call, reflection's included."""

    def __init__(self, token):
        self.metadata = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or []) + [self.metadata]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else \
            _Details(details.method, details.timeout, metadata, details.credentials,
                     getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


import collections  # noqa: E402


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


def open_channel(addr, options):
    ca = os.environ.get("TRAINFLEET_CA_CERT")
    if not ca:
        return grpc.insecure_channel(addr, options=options)
    read = lambda name: open(os.environ[name], "rb").read() if os.environ.get(name) else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("TRAINFLEET_CA_CERT"),
        private_key=read("TRAINFLEET_TLS_KEY"),
        certificate_chain=read("TRAINFLEET_TLS_CERT"),
    )
    return grpc.secure_channel(addr, credentials, options=options)


def main(argv):
    # One short command: reference counting frees what it makes. Cyclic collection could run a
    # refused reflection stream's `_Rendezvous.__del__` while this thread holds that call's
    # lock, and grpcio then waits for itself for ever (seen once: a test hung in
    # `gc_collect_main -> _Rendezvous.__del__ -> Condition.__enter__`, grpcio 1.85.1).
    gc.disable()
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    addr, verb = argv[1], argv[2]
    options = [("grpc.lb_policy_name", "round_robin")] if verb == "spread" else []
    channel = open_channel(addr, options)
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
    except grpc.FutureTimeoutError:
        print(json.dumps({"code": "UNAVAILABLE", "message": f"cannot connect to {addr}"}))
        return 3
    if os.environ.get("TRAINFLEET_TOKEN"):
        channel = grpc.intercept_channel(channel, Bearer(os.environ["TRAINFLEET_TOKEN"]))
    reflection = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(reflection)
    try:
        if verb == "list":
            for name in reflection.get_services():
                print(name)
        elif verb == "describe":
            print(describe(reflection, argv[3]))
        elif verb == "call":
            call_method(channel, pool, argv[3], argv[4] if len(argv) > 4 else "{}")
        elif verb == "spread":
            responses = []
            for _ in range(int(argv[3])):
                path, request, (codec, _) = prepare(pool, argv[4], argv[5] if len(argv) > 5 else "{}")
                response, call = channel.unary_unary(path, **codec).with_call(request, timeout=30)
                responses.append({
                    "metadata": dict(call.initial_metadata()),
                    "response": json.loads(json_format.MessageToJson(response)),
                })
            print(json.dumps(responses, indent=1))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except grpc.RpcError as err:
        print(json.dumps({"code": err.code().name, "message": err.details()}))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
