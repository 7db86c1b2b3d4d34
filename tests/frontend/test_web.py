"""The web page of the queue (issue 17): in headless Chromium against real processes,
paging a queue of 1,000 operations, and who may read and change what.

The browser test needs Debian's `chromium` (apt-get install chromium); it keeps a
screenshot of the page under the test's tmp dir and prints its path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from redbarn.frontend.config import FrontendConfig
from redbarn.frontend.metrics import Metrics
from redbarn.frontend.scheduling import scheduling_hook
from redbarn.frontend.server import FrontendServer, create_server
from redbarn.frontend.web import WebServer, web_hook
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue.scheduler import Scheduler
from redbarn.queue.synchronize import WorkerReport

from .observe_cluster import observed, run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, *args: str) -> str:
    assert CHROMIUM is not None
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--user-data-dir=" + args[0], *args[1:], url],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return out.stdout.decode(errors="replace")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_page_shows_live_worker_queued_operation_and_drain_in_chromium(tmp_path: Path) -> None:
    from reapi_client import ReapiClient  # type: ignore[import-not-found]

    with observed(tmp_path) as obs:
        obs.drain({"proc": "w0"})
        pq = {"instance_name_prefix": "", "size_class": "0"}
        obs.wait_for(
            "the worker drained", lambda: obs.total("redbarn_queue_workers", state="drained", **pq)
        )

        async def enqueue() -> str:
            client = ReapiClient(obs.target)
            digest = await client.prepare(["/bin/echo", "queued behind a drain"])
            task = asyncio.ensure_future(client.execute(digest))
            await asyncio.sleep(1.0)
            task.cancel()
            await client.close()
            return f"{digest.hash}-{digest.size_bytes}"

        action = run(enqueue())
        status, home = obs.get("/")
        assert status == 200
        queue_url = re.search(r"href='(/queue\?[^']+)'", home)
        assert queue_url, home
        # The size class page, then down the invocation tree to the queued operation.
        url = obs.http + queue_url.group(1).replace("&amp;", "&")
        profile = str(tmp_path / "chromium-profile")
        dom = chromium(url, profile, "--dump-dom")
        for _ in range(3):  # invocation levels: correlated, then tool invocation ids
            if "Queued operations here (0," not in dom:
                break
            child = re.search(r'href="(/queue\?[^"]*inv=[^"]+)"', dom)
            assert child, dom
            url = obs.http + child.group(1).replace("&amp;", "&")
            dom = chromium(url, profile, "--dump-dom")
        artefacts = tmp_path / "artefacts"
        artefacts.mkdir()
        (artefacts / "queue-page.html").write_text(dom)
        assert '"proc": "w0"' in dom  # the live worker (drained), in the workers table
        assert "Lease until" in dom and "Drains (1)" in dom
        assert action in dom  # the queued operation's action digest
        assert "Queued operations here (1, from 1)" in dom
        shot = artefacts / "queue-page.png"
        chromium(url, profile, f"--screenshot={shot}", "--window-size=1400,1000")
        assert shot.stat().st_size > 1000
        print(f"screenshot of the queue page: {shot}")


@dataclass
class InProcess:
    server: FrontendServer
    web: WebServer
    scheduler: Scheduler

    def get(self, path: str, token: str = "") -> tuple[int, str]:
        return self.request(path, token=token)

    def request(
        self, path: str, *, token: str = "", form: dict[str, str] | None = None, origin: str = ""
    ) -> tuple[int, str]:
        headers = {}
        if token:
            headers["Authorization"] = "Basic " + base64.b64encode(f"op:{token}".encode()).decode()
        if origin:
            headers["Origin"] = origin
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.web.port}{path}", data=data, headers=headers
        )
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    async def aget(self, path: str, token: str = "") -> tuple[int, str]:
        return await asyncio.to_thread(self.get, path, token)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


async def _start(config: FrontendConfig) -> InProcess:
    sched = scheduling_hook(config.scheduler)
    web = web_hook("127.0.0.1:0", Metrics(), sched)
    server, _ = await create_server(config, hooks=[sched, web])
    await server.start()
    return InProcess(server, web.server, sched.scheduler)  # type: ignore[attr-defined]


@pytest.fixture
async def frontend(frontend_config: FrontendConfig) -> AsyncIterator[InProcess]:
    fe = await _start(frontend_config)
    try:
        yield fe
    finally:
        await fe.server.stop(0)


async def _worker_and_queue(scheduler: Scheduler, n: int) -> None:
    """A worker (idle, drained) creates the empty-platform queue; `n` operations queue."""
    await scheduler.workers.synchronize(
        WorkerReport({"w": "1"}, "", re_pb2.Platform(), 0, "idle", prefer_being_idle=True)
    )
    await scheduler.control.set_drain(
        add=True, instance_name_prefix="", platform=re_pb2.Platform(), size_class=0,
        pattern={"w": "1"},
    )  # fmt: skip
    for i in range(n):
        action = re_pb2.Action(do_not_cache=True)
        blob = action.SerializeToString() + str(i).encode()
        digest = re_pb2.Digest(hash=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob))
        await scheduler.operations.execute(
            instance_name="", action_digest=digest, action=action, digest_function=1
        )


async def _down_to_queued(fe: InProcess, path: str) -> str:
    """The size class page at `path`, followed down the invocation tree (correlated,
    then tool invocation ids) to the level where operations are queued."""
    for _ in range(3):
        status, body = await fe.aget(path)
        assert status == 200, body
        if "Queued operations here (0," not in body:
            return body
        child = re.search(r"href='(/queue\?[^']*inv=[^']+)'", body)
        assert child, body
        path = child.group(1).replace("&amp;", "&")
    raise AssertionError(f"no queued operations below {path}")


async def test_a_queue_of_1000_operations_renders_in_pages(frontend: InProcess) -> None:
    await _worker_and_queue(frontend.scheduler, 1000)
    status, body = await frontend.aget("/operations")
    assert status == 200
    assert "1000 operations; showing 1 to 100." in body
    assert body.count("<tr>") == 101  # a header and one page
    after = re.search(r"href='/operations\?after=([^']+)'", body)
    assert after
    status, second = await frontend.aget(f"/operations?after={after.group(1)}")
    assert "1000 operations; showing 101 to 200." in second
    q = re.search(r"href='(/queue\?[^']+)'", (await frontend.aget("/"))[1])
    assert q
    queue = await _down_to_queued(frontend, q.group(1).replace("&amp;", "&"))
    assert "Queued operations here (1000, from 1)" in queue
    assert "next queued operations" in queue
    nxt = re.search(r"href='(/queue\?[^']*queued_after[^']+)'", queue)
    assert nxt
    status, page2 = await frontend.aget(nxt.group(1).replace("&amp;", "&"))
    # BuildQueueState pages queued operations by (priority, queued time in ms), so the
    # next page starts after every operation queued in the last one's millisecond.
    start = re.search(r"Queued operations here \(1000, from (\d+)\)", page2)
    assert start and int(start.group(1)) > 100, page2[-400:]


async def test_operation_page_and_kill_form_need_an_admin_token(
    frontend_config: FrontendConfig, tmp_path: Path
) -> None:
    for name, token in (("clients", "c-token"), ("admins", "a-token")):
        (tmp_path / name).write_text(token + "\n")
    import dataclasses

    config = dataclasses.replace(
        frontend_config,
        client_tokens=str(tmp_path / "clients"),
        admin_tokens=str(tmp_path / "admins"),
    )
    fe = await _start(config)
    try:
        await _worker_and_queue(fe.scheduler, 1)
        status, body = await fe.aget("/")
        assert status == 401 and "token is required" in body
        assert (await fe.aget("/", "wrong"))[0] == 401
        status, body = await fe.aget("/", "c-token")  # clients may not read once admins exist
        assert status == 403 and "Role client may not read" in body
        assert (await fe.aget("/metrics"))[0] == 200  # open: counts only
        status, ops = await fe.aget("/operations", "a-token")
        assert status == 200
        name = re.search(r"/operation\?name=([0-9a-f.]+)", ops)
        assert name
        status, op = await fe.aget(f"/operation?name={name.group(1)}", "a-token")
        assert status == 200 and "queued" in op and "Kill this operation" in op
        form = {"name": name.group(1), "form_token": fe.web.form_token}
        status, body = await asyncio.to_thread(
            fe.request, "/kill", token="a-token", form={"name": name.group(1)}
        )
        assert status == 403 and "form token" in body
        status, body = await asyncio.to_thread(
            fe.request, "/kill", token="a-token", form=form, origin="http://evil.example"
        )
        assert status == 403 and "Cross-origin" in body
        status, _ = await asyncio.to_thread(fe.request, "/kill", token="c-token", form=form)
        assert status == 403
        status, _ = await asyncio.to_thread(fe.request, "/kill", token="a-token", form=form)
        assert status == 303
        status, op = await fe.aget(f"/operation?name={name.group(1)}", "a-token")
        assert "completed" in op and "killed from the web page" in op
        status, body = await fe.aget("/operation?name=nope", "a-token")
        assert status == 404 and "nope" in body
    finally:
        await fe.server.stop(0)


async def test_drain_forms_and_escaping(frontend_config: FrontendConfig, tmp_path: Path) -> None:
    (tmp_path / "admins").write_text("a-token\n")
    import dataclasses

    fe = await _start(dataclasses.replace(frontend_config, admin_tokens=str(tmp_path / "admins")))
    try:
        await _worker_and_queue(fe.scheduler, 0)
        home = (await fe.aget("/", "a-token"))[1]
        q = re.search(r"href='/queue\?q=([0-9a-f]+)&amp;sc=0'", home)
        assert q
        form = {"q": q.group(1), "sc": "0", "form_token": fe.web.form_token}
        evil = '{"w": "<script>alert(1)</script>"}'
        status, _ = await asyncio.to_thread(
            fe.request, "/drain", token="a-token", form={**form, "pattern": evil}
        )
        assert status == 303
        page = (await fe.aget(f"/queue?q={q.group(1)}&sc=0", "a-token"))[1]
        assert "<script>" not in page and "&lt;script&gt;" in page
        assert "Drains (2)" in page
        status, body = await asyncio.to_thread(
            fe.request, "/drain", token="a-token", form={**form, "pattern": "[1]"}
        )
        assert status == 400 and "expected an object of strings" in body
        status, _ = await asyncio.to_thread(
            fe.request, "/undrain", token="a-token", form={**form, "pattern": evil}
        )
        assert status == 303
        assert "Drains (1)" in (await fe.aget(f"/queue?q={q.group(1)}&sc=0", "a-token"))[1]
    finally:
        await fe.server.stop(0)


async def test_forms_are_refused_without_admin_tokens(frontend: InProcess) -> None:
    await _worker_and_queue(frontend.scheduler, 0)
    assert (await frontend.aget("/"))[0] == 200  # reading is open without token files
    status, body = await asyncio.to_thread(
        frontend.request, "/kill", form={"name": "x", "form_token": frontend.web.form_token}
    )
    assert status == 403 and "--admin-tokens" in body


async def test_bad_requests_get_4xx_not_500(frontend: InProcess) -> None:
    import socket

    def raw(data: bytes) -> str:
        with socket.create_connection(("127.0.0.1", frontend.web.port), timeout=10) as s:
            s.sendall(data)
            return s.recv(4096).decode(errors="replace")

    too_many = "&".join(f"f{i}=1" for i in range(200))
    assert (
        await asyncio.to_thread(raw, f"GET /operations?{too_many} HTTP/1.1\r\n\r\n".encode())
    ).startswith("HTTP/1.1 400")
    assert (await asyncio.to_thread(raw, b"NONSENSE\r\n\r\n")).startswith("HTTP/1.1 400")
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert (await asyncio.to_thread(raw, big)).startswith("HTTP/1.1 413")
    body = b"x" * 70000
    head = f"POST /kill HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    assert (await asyncio.to_thread(raw, head)).startswith("HTTP/1.1 413")
    assert (await asyncio.to_thread(raw, b"DELETE / HTTP/1.1\r\n\r\n")).startswith("HTTP/1.1 405")
