"""What TLS and a bearer token cost the storage proxy: ByteStream throughput, three ways.

    .venv/bin/python bench/proxy_tls_bench.py [--size-mib 32] [--rounds 3]

Starts a private redis-server and four frontend processes (`python -m redbarn
frontend`): an upstream in plaintext; an upstream serving TLS (a throwaway CA made with
the `openssl` CLI) with a client token file; a proxy `--storage grpc://` to the first;
a proxy `--storage grpcs://` with `--storage-tls-ca` and `--storage-token-file` to the
second. A client in this process then writes a blob of `--size-mib` MiB with
ByteStream.Write and reads it back with ByteStream.Read, `--rounds` times per path
(a fresh blob each time), and prints the median MiB/s per path:

- direct: the plaintext upstream, no proxy;
- proxy grpc://: through the plaintext proxy;
- proxy grpcs:// + token: through the TLS proxy (the client to proxy hop stays plaintext).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from redbarn.proto import bytestream_pb2 as bs_pb2
from redbarn.proto import bytestream_pb2_grpc as bs_grpc
from redbarn.runtime.redisserver import RedisServer, free_port

MiB = 1 << 20
TOKEN = "bench-token-3f9a"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it."""
    ca, ca_key = d / "ca.pem", d / "ca.key"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=bench-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign",
    )  # fmt: skip
    cert, key, csr, ext = d / "srv.pem", d / "srv.key", d / "srv.csr", d / "srv.ext"
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost",
    )  # fmt: skip
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext),
    )  # fmt: skip
    return ca, cert, key


def frontend(port: int, redis_url: str, *flags: str) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "redbarn", "frontend", "--listen", f"127.0.0.1:{port}",
        "--redis", redis_url, "--max-blob-size", "1GiB", *flags,
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_ready(port: int, credentials: grpc.ChannelCredentials | None = None) -> None:
    target = f"localhost:{port}"
    for _ in range(300):
        try:
            channel = (
                grpc.aio.secure_channel(target, credentials)
                if credentials
                else grpc.aio.insecure_channel(target)
            )
            async with channel as ch:
                await asyncio.wait_for(ch.channel_ready(), 0.5)
                return
        except TimeoutError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"frontend on {port} never came up")


async def round_trip(stub: bs_grpc.ByteStreamStub, size: int) -> float:
    """Seconds to write then read back one fresh blob of `size` bytes."""
    data = uuid.uuid4().bytes * (size // 16)
    digest = hashlib.sha256(data).hexdigest()
    name = f"uploads/{uuid.uuid4()}/blobs/{digest}/{len(data)}"

    async def requests() -> AsyncIterator[bs_pb2.WriteRequest]:
        for offset in range(0, len(data), MiB):
            yield bs_pb2.WriteRequest(
                resource_name=name if offset == 0 else "",
                write_offset=offset,
                data=data[offset : offset + MiB],
                finish_write=offset + MiB >= len(data),
            )

    start = time.perf_counter()
    await stub.Write(requests())
    got = 0
    async for reply in stub.Read(bs_pb2.ReadRequest(resource_name=f"blobs/{digest}/{len(data)}")):
        got += len(reply.data)
    assert got == len(data)
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    redis = RedisServer().start()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp:
        d = Path(tmp)
        ca, cert, key = make_certs(d)
        (d / "tokens").write_text(f"{TOKEN}\n")
        (d / "token").write_text(f"{TOKEN}\n")
        plain_up, tls_up, plain_proxy, tls_proxy = (free_port() for _ in range(4))
        try:
            procs.append(frontend(plain_up, redis.url))
            procs.append(
                frontend(tls_up, redis.url, "--tls-cert", str(cert), "--tls-key", str(key),
                         "--client-tokens", str(d / "tokens"))
            )  # fmt: skip
            procs.append(
                frontend(plain_proxy, redis.url, "--storage", f"grpc://127.0.0.1:{plain_up}")
            )
            procs.append(
                frontend(tls_proxy, redis.url, "--storage", f"grpcs://localhost:{tls_up}",
                         "--storage-tls-ca", str(ca), "--storage-token-file", str(d / "token"))
            )  # fmt: skip
            await wait_ready(tls_up, grpc.ssl_channel_credentials(ca.read_bytes()))
            for port in (plain_up, plain_proxy, tls_proxy):
                await wait_ready(port)
            size = opts.size_mib * MiB
            print(f"ByteStream write + read of {opts.size_mib} MiB, median of {opts.rounds}")
            options = [("grpc.max_receive_message_length", 64 * MiB)]
            for label, port in (
                ("direct", plain_up),
                ("proxy grpc://", plain_proxy),
                ("proxy grpcs:// + token", tls_proxy),
            ):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
                    stub = bs_grpc.ByteStreamStub(ch)  # type: ignore[no-untyped-call]
                    times = [await round_trip(stub, size) for _ in range(opts.rounds)]
                mib_s = 2 * opts.size_mib / statistics.median(times)
                print(f"  {label:<24} {mib_s:7.1f} MiB/s")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)
            redis.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
