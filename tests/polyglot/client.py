"""A client team in another language: stubs generated from proto/ with
grpcio-tools, calling health Check and an authenticated RPC.

Usage: client.py STUB_DIR ADDRESS API_KEY
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from linkd.v1 import client_app_pb2, client_app_pb2_grpc  # noqa: E402

address, api_key = sys.argv[2], sys.argv[3]
result = {}
with grpc.insecure_channel(address) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "linkd.v1.ClientAppService", "linkd.v1.LinkService"]:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        result[f"health:{service}"] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    apps = client_app_pb2_grpc.ClientAppServiceStub(channel)
    reply = apps.ListClientApps(
        client_app_pb2.ListClientAppsRequest(),
        metadata=[("authorization", f"Bearer {api_key}")],
        timeout=10,
    )
    result["apps"] = [
        {"id": a.id, "environment": client_app_pb2.Environment.Name(a.environment)}
        for a in reply.client_apps
    ]
    try:
        apps.ListClientApps(client_app_pb2.ListClientAppsRequest(), timeout=10)
        result["anonymous"] = "OK"
    except grpc.RpcError as err:
        result["anonymous"] = err.code().name

print(json.dumps(result))
