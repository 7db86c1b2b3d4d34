"""The frontend's HTTP port (`--metrics-listen`): `/metrics` and a web page of the queue.

Pages are server-rendered HTML (no JavaScript), read through the same BuildQueueState
reads as the gRPC API (`redbarn.queue.admin`), so any frontend shows the whole cluster:

    /                          platform queues and their size classes
    /queue?q=<P>&sc=<n>        one size class queue: invocations (with ?inv=t:<id> to go
                               down the tree), workers with their current action and lease,
                               drains, queued operations (paged)
    /operations                every operation, by name (paged: ?after=<name>)
    /operation?name=<name>     one operation: action digest, stage, timestamps, result
    POST /drain /undrain /kill the forms on those pages

Access. `/metrics` is open (counts only; serve it on an internal address). The pages
follow BuildQueueState's rules: with no token files configured they are open to read;
with tokens, a browser sends one as the password of HTTP Basic authentication (any user
name) or as `Authorization: Bearer`, and it must be one that may call BuildQueueState
reads (only admin tokens, once any admin token is configured). The forms (drains, kill)
need an admin token always, so they are refused when no admin tokens are configured,
and they carry a per-process form token and must come from this origin (no cross-site
posts riding on a browser's saved Basic credentials).

Robustness: one request per connection, request head at most 16 KiB, form bodies at most
64 KiB, 10 s to send them; every value from Redis or a client is HTML-escaped.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import html
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from redbarn import errors
from redbarn.frontend.auth import BQS, Role, TokenTable, allowed
from redbarn.frontend.buildqueuestate import kill_operations, set_drain
from redbarn.frontend.metrics import CONTENT_TYPE, Metrics
from redbarn.proto import buildqueuestate_pb2 as bq_pb2
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import codec
from redbarn.queue.admin import invocation_id
from redbarn.queue.registry import PlatformQueue
from redbarn.queue.scheduler import Scheduler
from redbarn.queue.stats import QueueStats

if TYPE_CHECKING:
    from redbarn.frontend.server import Frontend, Hook

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
IO_TIMEOUT = 10.0
PAGE = 100  # rows per page
READ_METHOD = BQS + "ListPlatformQueues"
WRITE_METHOD = BQS + "AddDrain"


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    form: dict[str, list[str]]

    def arg(self, name: str, default: str = "") -> str:
        return (self.query.get(name) or self.form.get(name) or [default])[0]


REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


def e(value: object) -> str:
    """HTML-escaped text of anything."""
    return html.escape(str(value), quote=True)


def ts(t: timestamp_pb2.Timestamp) -> str:
    if not t.seconds and not t.nanos:
        return ""
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t.seconds)) + f".{t.nanos // 1_000_000:03d}Z"
    )


def digest_text(d: re_pb2.Digest) -> str:
    return f"{d.hash}-{d.size_bytes}"


def platform_text(platform: re_pb2.Platform) -> str:
    return ", ".join(f"{p.name}={p.value}" for p in platform.properties) or "(empty)"


def worker_id_text(worker_id: Any) -> str:
    return json.dumps(dict(worker_id), sort_keys=True)


def _stage(st: bq_pb2.OperationState) -> str:
    return st.WhichOneof("stage") or ""


STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#eee}code{font-size:.9em}
nav a{margin-right:1em}form{display:inline}.muted{color:#777}"""


def page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{e(title)} - redbarn</title><style>{STYLE}</style></head><body>"
        "<nav><a href='/'>Platform queues</a><a href='/operations'>Operations</a>"
        "<a href='/metrics'>Metrics</a></nav>"
        f"<h1>{e(title)}</h1>{body}</body></html>"
    ).encode()


def table(headers: list[str], rows: list[list[str]], empty: str = "none") -> str:
    """A table; `rows` cells are HTML already (escape values with `e`)."""
    if not rows:
        return f"<p class='muted'>{e(empty)}</p>"
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def link(path: str, text: str, **params: str | int) -> str:
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
    return f"<a href='{e(path + ('?' + query if query else ''))}'>{e(text)}</a>"


def _fields(text: str, what: str) -> dict[str, list[str]]:
    try:
        return parse_qs(text, max_num_fields=100)
    except ValueError as err:
        raise HttpError(400, f"The {what} has more than 100 fields") from err


class WebServer:
    """`/metrics` and the queue pages, served from the frontend's event loop."""

    def __init__(
        self,
        address: str,
        metrics: Metrics,
        scheduler: Callable[[], Scheduler | None],
        tokens: TokenTable | None,
    ) -> None:
        self.address = address
        self.metrics = metrics
        self._scheduler = scheduler
        self.tokens = tokens
        self.form_token = secrets.token_urlsafe(24)
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        host, _, port = self.address.rpartition(":")
        self._server = await asyncio.start_server(
            self._serve, host.strip("[]") or None, int(port), limit=MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # HTTP ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(self._read(reader), IO_TIMEOUT)
                status, headers, body = await self.handle(request)
            except HttpError as err:
                status, headers = err.status, err.headers
                body = page(REASONS.get(err.status, "Error"), f"<p>{e(err)}</p>")
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            except Exception:
                log.exception("web request failed")
                status, headers, body = 500, {}, page("Internal Server Error", "")
            headers.setdefault("Content-Type", "text/html; charset=utf-8")
            head = f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            head += "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
            head += "X-Frame-Options: DENY\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(head.encode("latin-1") + b"\r\n" + body)
            await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> Request:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as err:
            raise HttpError(413, f"Request head exceeds {MAX_HEAD} bytes") from err
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise HttpError(400, "Malformed request line")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        url = urlsplit(parts[1])
        form: dict[str, list[str]] = {}
        if parts[0] == "POST":
            length = headers.get("content-length", "0")
            if not length.isdigit():
                raise HttpError(400, "Content-Length must be a number")
            if int(length) > MAX_BODY:
                raise HttpError(413, f"Form body exceeds {MAX_BODY} bytes")
            body = await reader.readexactly(int(length))
            form = _fields(body.decode("utf-8", "replace"), "form")
        return Request(parts[0], url.path, _fields(url.query, "query"), headers, form)

    def _role(self, request: Request) -> Role | None:
        """The caller's role (None: no valid token). Raises 401 without credentials."""
        assert self.tokens is not None
        token = None
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                token = base64.b64decode(value, validate=True).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                token = None
        elif scheme.lower() == "bearer":
            token = value.strip()
        role = self.tokens.role_of(token) if token else None
        if role is None:
            raise HttpError(
                401,
                "A token is required: give it as the password (any user name)",
                {"WWW-Authenticate": 'Basic realm="redbarn", charset="UTF-8"'},
            )
        return role

    def _has_admins(self) -> bool:
        return self.tokens is not None and any(r is Role.ADMIN for _, r in self.tokens.entries)

    def _check_read(self, request: Request) -> None:
        if self.tokens is None:
            return
        role = self._role(request)
        assert role is not None
        if not allowed(role, READ_METHOD, client_bqs_reads=not self._has_admins()):
            raise HttpError(403, f"Role {role.value} may not read the build queue state")

    def _check_write(self, request: Request) -> None:
        if not self._has_admins():
            raise HttpError(403, "Changing the queue from this page needs --admin-tokens")
        role = self._role(request)
        assert role is not None
        if not allowed(role, WRITE_METHOD):
            raise HttpError(403, f"Role {role.value} may not change the build queue")
        given = request.form.get("form_token", [""])[0]
        if not hmac.compare_digest(given.encode(), self.form_token.encode()):
            raise HttpError(403, "Missing or stale form token: reload the page and try again")
        origin = request.headers.get("origin") or request.headers.get("referer", "")
        host = request.headers.get("host", "")
        if origin and urlsplit(origin).netloc != host:
            raise HttpError(403, "Cross-origin form posts are refused")

    async def handle(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        """Route one request: (status, headers, body)."""
        if request.path == "/metrics":
            if request.method != "GET":
                raise HttpError(405, "GET only")
            return 200, {"Content-Type": CONTENT_TYPE}, await self.metrics.exposition()
        scheduler = self._scheduler()
        if scheduler is None:
            raise HttpError(404, "This frontend does not schedule")
        views: dict[str, Callable[[Scheduler, Request], Awaitable[bytes]]] = {
            "/": self.platform_queues,
            "/queue": self.size_class_queue,
            "/operations": self.operations,
            "/operation": self.operation,
        }
        actions: dict[str, Callable[[Scheduler, Request], Awaitable[str]]] = {
            "/drain": self.add_drain,
            "/undrain": self.remove_drain,
            "/kill": self.kill,
        }
        try:
            if request.method == "GET" and request.path in views:
                self._check_read(request)
                return 200, {}, await views[request.path](scheduler, request)
            if request.method == "POST" and request.path in actions:
                self._check_write(request)
                return 303, {"Location": await actions[request.path](scheduler, request)}, b""
        except errors.RedbarnError as err:
            status = {errors.NotFound: 404, errors.InvalidArgument: 400}.get(type(err), 503)
            raise HttpError(status, str(err)) from err
        if request.path in views or request.path in actions:
            raise HttpError(405, f"{request.method} is not served on {request.path}")
        raise HttpError(404, f"No page {request.path}")

    # Pages -----------------------------------------------------------------------------

    async def _queue(self, scheduler: Scheduler, request: Request) -> tuple[PlatformQueue, int]:
        domain = request.arg("q")
        q = (await scheduler.registry.queues(fresh=True)).get(domain)
        sc = request.arg("sc", "0")
        if q is None or not sc.isdigit():
            raise HttpError(404, f"No platform queue {domain!r} with size class {sc!r}")
        return q, int(sc)

    @staticmethod
    def _scq(q: PlatformQueue, sc: int) -> bq_pb2.SizeClassQueueName:
        return bq_pb2.SizeClassQueueName(
            platform_queue_name=bq_pb2.PlatformQueueName(
                instance_name_prefix=q.prefix, platform=codec.platform_from_json(q.platform_json)
            ),
            size_class=sc,
        )

    async def platform_queues(self, scheduler: Scheduler, request: Request) -> bytes:
        resp = await scheduler.admin.list_platform_queues()
        by_key = {
            (q.prefix, q.platform_json): q.domain
            for q in (await scheduler.registry.queues()).values()
        }
        rows = []
        for pq in resp.platform_queues:
            pjson = codec.platform_json(pq.name.platform)
            domain = by_key.get((pq.name.instance_name_prefix, pjson), "")
            for scq in pq.size_class_queues:
                root = scq.root_invocation
                rows.append([
                    e(pq.name.instance_name_prefix or '""'),
                    e(platform_text(pq.name.platform)),
                    link("/queue", str(scq.size_class), q=domain, sc=scq.size_class),
                    e(root.queued_operations_count.indirect),
                    e(root.executing_workers_count),
                    e(scq.workers_count),
                    e(root.idle_workers_count),
                    e(scq.drains_count),
                    e(ts(scq.timeout)),
                ])  # fmt: skip
        body = table(
            ["Instance name prefix", "Platform", "Size class", "Queued", "Executing",
             "Workers", "Idle workers", "Drains", "Removed at (no workers)"],
            rows,
            "No platform queues: none is predeclared and no worker has synchronized.",
        )  # fmt: skip
        return page("Platform queues", body)

    def _ids(self, request: Request) -> list[Any]:
        ids = []
        for item in request.query.get("inv", []):
            kind, sep, value = item.partition(":")
            if not sep or kind not in (codec.TOOL, codec.CORRELATED):
                raise HttpError(400, f"inv {item!r}: expected t:<tool id> or c:<correlated id>")
            ids.append(invocation_id(kind, value))
        return ids

    async def size_class_queue(self, scheduler: Scheduler, request: Request) -> bytes:
        q, sc = await self._queue(scheduler, request)
        admin = scheduler.admin
        scq = self._scq(q, sc)
        inv = request.query.get("inv", [])
        name = bq_pb2.InvocationName(size_class_queue_name=scq, ids=self._ids(request))
        children = await admin.list_invocation_children(
            bq_pb2.ListInvocationChildrenRequest(invocation_name=name)
        )
        rows = []
        for child in children.children:
            md = re_pb2.RequestMetadata()
            child.id.Unpack(md)
            # The level's kind comes from the configured invocation keys (an empty id
            # does not say which of the two fields it was).
            levels = scheduler.config.invocation_keys
            kind = levels[len(inv)] if len(inv) < len(levels) else codec.TOOL
            value = (
                md.correlated_invocations_id if kind == codec.CORRELATED else md.tool_invocation_id
            )
            path = "&".join(f"inv={quote(i, safe='')}" for i in [*inv, f"{kind}:{value}"])
            href = f"/queue?q={quote(q.domain)}&sc={sc}&{path}"
            st = child.state
            rows.append([
                f"<a href='{e(href)}'>{e(value or '(none)')}</a>",
                e("correlated" if kind == codec.CORRELATED else "tool"),
                e(st.queued_operations_count.direct), e(st.queued_operations_count.indirect),
                e(st.executing_workers_count), e(st.children_count),
            ])  # fmt: skip
        where = " / ".join(e(i) for i in inv) or "root"
        prefix = q.prefix or '""'
        parts = [
            f"<p>Instance name prefix <code>{e(prefix)}</code>, platform "
            f"<code>{e(platform_text(codec.platform_from_json(q.platform_json)))}</code>, "
            f"size class {e(sc)}</p>",
            f"<h2>Invocations below {where}</h2>",
            table(
                ["Invocation", "Kind", "Queued here", "Queued below", "Executing", "Children"],
                rows,
                "No invocations with queued or executing work.",
            ),
        ]
        parts.append(await self._workers_section(scheduler, q, sc, request))
        parts.append(await self._drains_section(scheduler, q, sc))
        parts.append(await self._queued_section(scheduler, q, sc, name, request))
        return page("Size class queue", "".join(parts))

    async def _workers_section(
        self, scheduler: Scheduler, q: PlatformQueue, sc: int, request: Request
    ) -> str:
        req = bq_pb2.ListWorkersRequest(page_size=PAGE)
        req.filter.all.CopyFrom(self._scq(q, sc))
        after = request.arg("workers_after")
        if after:
            try:
                req.start_after.worker_id.update(json.loads(after))
            except (ValueError, TypeError, AttributeError) as err:
                raise HttpError(400, f"workers_after {after!r}: expected a worker id") from err
        resp = await scheduler.admin.list_workers(req)
        rows = []
        for w in resp.workers:
            op = w.current_operation
            current = ""
            if op.name:
                current = link("/operation", digest_text(op.action_digest), name=op.name)
            rows.append([
                f"<code>{e(worker_id_text(w.id))}</code>", current,
                e(ts(w.timeout) or "parked (idle, synchronizing)"),
                e("yes" if w.drained else ""),
            ])  # fmt: skip
        info = resp.pagination_info
        more = ""
        if info.start_index + len(resp.workers) < info.total_entries and resp.workers:
            more = link("/queue", "next workers", q=q.domain, sc=sc,
                        workers_after=worker_id_text(resp.workers[-1].id))  # fmt: skip
        return (
            f"<h2>Workers ({e(info.total_entries)})</h2>"
            + table(["Worker", "Current action", "Lease until", "Drained"], rows)
            + more
        )

    def _form(self, action: str, label: str, fields: dict[str, str]) -> str:
        hidden = "".join(
            f"<input type='hidden' name='{e(k)}' value='{e(v)}'>"
            for k, v in {**fields, "form_token": self.form_token}.items()
        )
        return (
            f"<form method='post' action='{e(action)}'>{hidden}<button>{e(label)}</button></form>"
        )

    async def _drains_section(self, scheduler: Scheduler, q: PlatformQueue, sc: int) -> str:
        resp = await scheduler.admin.list_drains(
            bq_pb2.ListDrainsRequest(size_class_queue_name=self._scq(q, sc))
        )
        where = {"q": q.domain, "sc": str(sc)}
        rows = [
            [
                f"<code>{e(worker_id_text(d.worker_id_pattern))}</code>",
                e(ts(d.created_timestamp)),
                self._form("/undrain", "Remove", {**where, "pattern": worker_id_text(d.worker_id_pattern)}),
            ]
            for d in resp.drains
        ]  # fmt: skip
        add = (
            "<form method='post' action='/drain'>"
            + "".join(
                f"<input type='hidden' name='{e(k)}' value='{e(v)}'>"
                for k, v in {**where, "form_token": self.form_token}.items()
            )
            + "<label>Worker id pattern (JSON) <input name='pattern' size='40' "
            "value='{}'></label> <button>Add drain</button></form>"
        )
        return (
            f"<h2>Drains ({len(resp.drains)})</h2>"
            + table(["Worker id pattern", "Created", ""], rows)
            + add
        )

    async def _queued_section(
        self,
        scheduler: Scheduler,
        q: PlatformQueue,
        sc: int,
        name: bq_pb2.InvocationName,
        request: Request,
    ) -> str:
        req = bq_pb2.ListQueuedOperationsRequest(invocation_name=name, page_size=PAGE)
        after = request.arg("queued_after")
        if after:
            prio, _, ms = after.partition(":")
            if not (prio.lstrip("-").isdigit() and ms.isdigit()):
                raise HttpError(400, f"queued_after {after!r}: expected <priority>:<ms>")
            req.start_after.priority = int(prio)
            req.start_after.queued_timestamp.CopyFrom(codec.ms_timestamp(int(ms)))
        resp = await scheduler.admin.list_queued_operations(req)
        rows = [
            [
                link("/operation", op.name, name=op.name),
                f"<code>{e(digest_text(op.action_digest))}</code>",
                e(op.priority), e(ts(op.queued_timestamp)),
            ]
            for op in resp.queued_operations
        ]  # fmt: skip
        info = resp.pagination_info
        more = ""
        if resp.queued_operations and info.start_index + len(rows) < info.total_entries:
            last = resp.queued_operations[-1]
            last_ms = last.queued_timestamp.seconds * 1000 + last.queued_timestamp.nanos // 10**6
            invs = "".join(f"&inv={quote(i, safe='')}" for i in request.query.get("inv", []))
            href = (
                f"/queue?q={quote(q.domain)}&sc={sc}{invs}"
                f"&queued_after={quote(f'{last.priority}:{last_ms}')}"
            )
            more = f"<a href='{e(href)}'>next queued operations</a>"
        return (
            f"<h2>Queued operations here ({e(info.total_entries)}, from "
            f"{e(info.start_index + 1 if rows else 0)})</h2>"
            + table(["Operation", "Action digest", "Priority", "Queued"], rows)
            + more
        )

    async def operations(self, scheduler: Scheduler, request: Request) -> bytes:
        req = bq_pb2.ListOperationsRequest(page_size=PAGE)
        after = request.arg("after")
        if after:
            req.start_after.operation_name = after
        resp = await scheduler.admin.list_operations(req)
        rows = [
            [
                link("/operation", op.name, name=op.name),
                f"<code>{e(digest_text(op.action_digest))}</code>",
                e(_stage(op)), e(op.priority), e(ts(op.queued_timestamp)),
            ]
            for op in resp.operations
        ]  # fmt: skip
        info = resp.pagination_info
        nav = ""
        if resp.operations and info.start_index + len(rows) < info.total_entries:
            nav = link("/operations", "next page", after=resp.operations[-1].name)
        head = (
            f"<p>{e(info.total_entries)} operations; showing "
            f"{e(info.start_index + 1 if rows else 0)} to {e(info.start_index + len(rows))}.</p>"
        )
        return page(
            "Operations",
            head + table(["Operation", "Action digest", "Stage", "Priority", "Queued"], rows) + nav,
        )

    async def operation(self, scheduler: Scheduler, request: Request) -> bytes:
        name = request.arg("name")
        op = (await scheduler.admin.get_operation(name)).operation
        view = None
        try:
            view = await scheduler.operations.get_operation_view(name, watch=False)
        except errors.NotFound:
            view = None
        rows = [
            ["Name", f"<code>{e(name)}</code>"],
            ["Action digest", f"<code>{e(digest_text(op.action_digest))}</code>"],
            ["Digest function", e(re_pb2.DigestFunction.Value.Name(op.digest_function))],
            ["Instance name suffix", e(op.instance_name_suffix)],
            ["Stage", e(_stage(op))],
            ["Priority", e(op.priority)],
            ["Queued", e(ts(op.queued_timestamp))],
            ["Removed after", e(ts(op.timeout))],
        ]
        if view is not None:
            if view.worker:
                rows.append(["Worker", f"<code>{e(view.worker)}</code>"])
            names = {
                "s": "assigned",
                "f": "fetching inputs",
                "r": "running",
                "u": "uploading outputs",
            }
            for item in view.worker_stages.split():
                if item[:1] in names and item[1:].isdigit():
                    rows.append([e(names[item[0]]), e(ts(codec.ms_timestamp(int(item[1:]))))])
        body = table(["", ""], rows)
        if op.HasField("completed"):
            body += self._result(op.completed)
        else:
            body += self._form("/kill", "Kill this operation", {"name": name})
        return page("Operation", body)

    @staticmethod
    def _result(resp: re_pb2.ExecuteResponse) -> str:
        r = resp.result
        md = r.execution_metadata
        rows = [
            ["Status", e(f"{resp.status.code} {resp.status.message}")],
            ["Exit code", e(r.exit_code)],
            ["Cached result", e(resp.cached_result)],
            ["Worker", e(md.worker)],
        ]
        for label, field in (
            ("Worker start", md.worker_start_timestamp),
            ("Input fetch start", md.input_fetch_start_timestamp),
            ("Execution start", md.execution_start_timestamp),
            ("Output upload start", md.output_upload_start_timestamp),
            ("Worker completed", md.worker_completed_timestamp),
        ):
            rows.append([e(label), e(ts(field))])
        rows += [[e("Output file"), f"<code>{e(f.path)}</code> {e(digest_text(f.digest))}"]
                 for f in r.output_files]  # fmt: skip
        if r.HasField("stdout_digest"):
            rows.append(["stdout", f"<code>{e(digest_text(r.stdout_digest))}</code>"])
        if r.HasField("stderr_digest"):
            rows.append(["stderr", f"<code>{e(digest_text(r.stderr_digest))}</code>"])
        return "<h2>Result</h2>" + table(["", ""], rows)

    # Actions ---------------------------------------------------------------------------

    def _pattern(self, request: Request) -> dict[str, str]:
        text = request.arg("pattern")
        try:
            pattern = json.loads(text)
        except ValueError as err:
            raise HttpError(400, f"pattern {text!r} is not JSON: {err}") from err
        if not isinstance(pattern, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in pattern.items()
        ):
            raise HttpError(400, f"pattern {text!r}: expected an object of strings")
        return pattern

    async def _set_drain(self, scheduler: Scheduler, request: Request, *, add: bool) -> str:
        q, sc = await self._queue(scheduler, request)
        req = bq_pb2.AddOrRemoveDrainRequest(size_class_queue_name=self._scq(q, sc))
        req.worker_id_pattern.update(self._pattern(request))
        await set_drain(scheduler, req, add=add)
        return f"/queue?q={quote(q.domain)}&sc={sc}"

    async def add_drain(self, scheduler: Scheduler, request: Request) -> str:
        return await self._set_drain(scheduler, request, add=True)

    async def remove_drain(self, scheduler: Scheduler, request: Request) -> str:
        return await self._set_drain(scheduler, request, add=False)

    async def kill(self, scheduler: Scheduler, request: Request) -> str:
        name = request.arg("name")
        req = bq_pb2.KillOperationsRequest(
            status=status_pb2.Status(code=1, message="Operation was killed from the web page")
        )
        req.filter.operation_name = name
        await kill_operations(scheduler, req)
        return f"/operation?name={quote(name, safe='')}"


def web_hook(address: str, metrics: Metrics, scheduling: Hook | None = None) -> Hook:
    """A `create_server` hook serving `/metrics` and the pages on `address` (HOST:PORT).

    List it after `scheduling` (the scheduling hook, whose `scheduler` attribute it
    reads once that hook has run): the scheduler then reports to `metrics`, and the
    queue gauges and pages read through it. The bound port is `hook.server.port`."""

    async def add_web(frontend: Frontend) -> None:
        scheduler: Scheduler | None = getattr(scheduling, "scheduler", None)
        if scheduler is not None:
            scheduler.observe(metrics)
            metrics.add_queue_gauges(
                QueueStats(frontend.redis, scheduler.registry, ttl=metrics.ttl)
            )
        config = frontend.config
        tokens = TokenTable.from_files(
            clients=config.client_tokens, workers=config.worker_tokens, admins=config.admin_tokens
        )
        server = WebServer(address, metrics, lambda: scheduler, tokens)
        await server.start()
        add_web.server = server  # type: ignore[attr-defined]
        frontend.closers.append(server.close)
        log.info("metrics and queue pages on http://%s (port %d)", address, server.port)

    return add_web
