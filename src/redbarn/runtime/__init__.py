"""How redbarn's processes run: infrastructure shared by the frontend, the worker and `up`.

- `grpcenv`: gRPC core settings that must precede `import grpc`, and the poller policy;
- `eventloop`: uvloop where it is installed, else asyncio's loop;
- `fastredis`: the pipelined Redis client for the frontend's script calls;
- `outage`: logging a backend's outage once, with reminders, and its recovery;
- `redisserver`: finding and running a private `redis-server` (`redbarn up`, tests);
- `healthcheck`: the container health checks compose.yaml runs.

This package imports nothing at import time: `grpcenv` must be importable before grpc.
"""
