"""Container health checks, for compose.yaml.

`python -m redbarn.runtime.healthcheck HOST:PORT` exits 0 when the frontend's gRPC health
service answers SERVING (it answers NOT_SERVING while Redis is unreachable).
`python -m redbarn.runtime.healthcheck --heartbeat FILE` exits 0 when FILE (which the worker
touches after every successful Synchronize) changed within `--max-age` seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def check_frontend(target: str, timeout: float) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as err:
            return f"{target}: {err.code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_heartbeat(path: str, max_age: float) -> str | None:
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError as err:
        return f"{path}: {err.strerror}"
    return None if age <= max_age else f"{path}: last synchronized {age:.0f}s ago"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m redbarn.runtime.healthcheck", allow_abbrev=False
    )
    parser.add_argument("target", nargs="?", default="127.0.0.1:8981")
    parser.add_argument("--heartbeat", help="worker heartbeat file to check instead")
    parser.add_argument("--max-age", type=float, default=150.0)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.heartbeat:
        problem = check_heartbeat(args.heartbeat, args.max_age)
    else:
        problem = check_frontend(args.target, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
