"""`redbarn state`: the build queue as tables (or JSON), read through BuildQueueState.

Asks any frontend (`--frontend HOST:PORT`; every frontend answers the same, all state is
in Redis) for its platform queues, workers, operations and drains:

    redbarn state --frontend lb:8981 [--token-file admin.token] [--json]
    redbarn state --frontend lb:8981 --tls-ca ca.pem --tls-cert me.pem --tls-key me.key

The token (a file holding it, as for `redbarn worker`) must be one that may read
BuildQueueState: an admin token once any admin token is configured. `--limit` caps the
operations listed (they are paged, `--limit` per call). Exit codes: 0 read, 1 the
frontend refused or could not be reached (the line says which and why), 2 bad flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format

from redbarn.config import DEFAULT_PORT, ConfigError, add_flag, read_file
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import buildqueuestate_pb2_grpc as bq_grpc

PAGE = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag(
        parser, "--frontend", f"127.0.0.1:{DEFAULT_PORT}", "frontend (or load balancer) HOST:PORT"
    )
    add_flag(parser, "--token-file", "", "file holding the bearer token to send")
    add_flag(parser, "--tls-ca", "", "PEM CA bundle of the frontend's certificate (TLS)")
    add_flag(parser, "--tls-cert", "", "PEM client certificate (mTLS)")
    add_flag(parser, "--tls-key", "", "PEM private key of --tls-cert")
    add_flag(parser, "--limit", "1000", "most operations listed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _channel(args: argparse.Namespace) -> grpc.Channel:
    ca, cert, key = args.tls_ca or "", args.tls_cert or "", args.tls_key or ""
    if bool(cert) != bool(key):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    if cert and not ca:
        raise ConfigError("--tls-cert needs --tls-ca (the CA of the frontend's certificate)")
    if not ca:
        return grpc.insecure_channel(args.frontend)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_file(ca, "--tls-ca"),
        private_key=read_file(key, "--tls-key") if key else None,
        certificate_chain=read_file(cert, "--tls-cert") if cert else None,
    )
    return grpc.secure_channel(args.frontend, credentials)


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    if not args.token_file:
        return []
    token = read_file(args.token_file, "--token-file").decode().strip()
    if not token:
        raise ConfigError(f"--token-file {args.token_file} is empty")
    return [("authorization", f"Bearer {token}")]


def read_state(stub: Any, metadata: list[tuple[str, str]], limit: int) -> dict[str, Any]:
    """Every platform queue, worker, drain and (up to `limit`) operation, as messages."""
    queues = stub.ListPlatformQueues(empty_pb2.Empty(), metadata=metadata, timeout=30)
    workers: list[tuple[bq_pb2.SizeClassQueueName, bq_pb2.WorkerState]] = []
    drains: list[tuple[bq_pb2.SizeClassQueueName, bq_pb2.DrainState]] = []
    for pq in queues.platform_queues:
        for scq in pq.size_class_queues:
            name = bq_pb2.SizeClassQueueName(platform_queue_name=pq.name, size_class=scq.size_class)
            req = bq_pb2.ListWorkersRequest(page_size=PAGE)
            req.filter.all.CopyFrom(name)
            while True:
                page = stub.ListWorkers(req, metadata=metadata, timeout=30)
                workers += [(name, w) for w in page.workers]
                if len(page.workers) < PAGE:
                    break
                req.start_after.worker_id.clear()
                req.start_after.worker_id.update(page.workers[-1].id)
            listed = stub.ListDrains(
                bq_pb2.ListDrainsRequest(size_class_queue_name=name), metadata=metadata, timeout=30
            )
            drains += [(name, d) for d in listed.drains]
    operations: list[bq_pb2.OperationState] = []
    total = 0
    op_req = bq_pb2.ListOperationsRequest(page_size=min(PAGE, limit))
    while len(operations) < limit:
        op_page = stub.ListOperations(op_req, metadata=metadata, timeout=30)
        total = op_page.pagination_info.total_entries
        operations += op_page.operations[: limit - len(operations)]
        if not op_page.operations or len(op_page.operations) < op_req.page_size:
            break
        op_req.start_after.operation_name = op_page.operations[-1].name
    return {
        "platform_queues": queues,
        "workers": workers,
        "drains": drains,
        "operations": operations,
        "operations_total": total,
    }


def _platform(name: bq_pb2.PlatformQueueName) -> str:
    props = ", ".join(f"{p.name}={p.value}" for p in name.platform.properties)
    return props or "(empty)"


def _ts(t: Any) -> str:
    if not t.seconds and not t.nanos:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.seconds))


def _table(title: str, headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return f"{title}: none\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    return f"{title}:\n{line.rstrip()}\n{body}\n"


def _queue(name: bq_pb2.SizeClassQueueName) -> list[str]:
    pq = name.platform_queue_name
    return [pq.instance_name_prefix or '""', _platform(pq), str(name.size_class)]


def render(state: dict[str, Any]) -> str:
    rows = []
    for pq in state["platform_queues"].platform_queues:
        for scq in pq.size_class_queues:
            root = scq.root_invocation
            rows.append([
                pq.name.instance_name_prefix or '""', _platform(pq.name), str(scq.size_class),
                str(root.queued_operations_count.indirect), str(root.executing_workers_count),
                str(scq.workers_count), str(root.idle_workers_count), str(scq.drains_count),
            ])  # fmt: skip
    out = [
        _table(
            "Platform queues",
            ["PREFIX", "PLATFORM", "SIZE", "QUEUED", "EXECUTING", "WORKERS", "IDLE", "DRAINS"],
            rows,
        )
    ]
    rows = []
    for name, w in state["workers"]:
        op = w.current_operation
        current = f"{op.action_digest.hash}-{op.action_digest.size_bytes}" if op.name else ""
        rows.append([
            *_queue(name), json.dumps(dict(w.id), sort_keys=True), current,
            _ts(w.timeout) or "parked", "yes" if w.drained else "",
        ])  # fmt: skip
    out.append(
        _table(
            "Workers",
            ["PREFIX", "PLATFORM", "SIZE", "WORKER", "CURRENT ACTION", "LEASE", "DRAINED"],
            rows,
        )
    )
    rows = [
        [
            op.name,
            op.WhichOneof("stage") or "",
            f"{op.action_digest.hash}-{op.action_digest.size_bytes}",
            str(op.priority),
            _ts(op.queued_timestamp),
        ]
        for op in state["operations"]
    ]
    shown = f" ({len(rows)} of {state['operations_total']})"
    out.append(
        _table("Operations" + shown, ["NAME", "STAGE", "ACTION", "PRIORITY", "QUEUED"], rows)
    )
    rows = [
        [*_queue(name), json.dumps(dict(d.worker_id_pattern), sort_keys=True),
         _ts(d.created_timestamp)]
        for name, d in state["drains"]
    ]  # fmt: skip
    out.append(_table("Drains", ["PREFIX", "PLATFORM", "SIZE", "PATTERN", "CREATED"], rows))
    return "\n".join(out)


def as_json(state: dict[str, Any]) -> dict[str, Any]:
    def d(message: Any) -> Any:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    return {
        "platform_queues": d(state["platform_queues"]).get("platform_queues", []),
        "workers": [{"size_class_queue": d(n), **d(w)} for n, w in state["workers"]],
        "operations": [d(op) for op in state["operations"]],
        "operations_total": state["operations_total"],
        "drains": [{"size_class_queue": d(n), **d(x)} for n, x in state["drains"]],
    }


def run(args: argparse.Namespace) -> int:
    limit = str(args.limit)
    if not limit.isdigit() or int(limit) < 1:
        raise ConfigError(f'invalid --limit "{limit}": expected a whole number of at least 1')
    metadata = _metadata(args)
    with _channel(args) as channel:
        stub = bq_grpc.BuildQueueStateStub(channel)  # type: ignore[no-untyped-call]
        try:
            state = read_state(stub, metadata, int(limit))
        except grpc.RpcError as err:
            code = err.code().name if hasattr(err, "code") else "UNKNOWN"
            details = err.details() if hasattr(err, "details") else str(err)
            print(f"redbarn state: {args.frontend}: {code}: {details}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(as_json(state), indent=2, sort_keys=True))
    else:
        print(render(state), end="")
    return 0
