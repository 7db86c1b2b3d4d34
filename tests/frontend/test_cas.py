"""ContentAddressableStorage over a real channel, on Redis and through the gRPC proxy."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, status_pb2

from redbarn.proto import remote_execution_pb2 as re_pb2

from .conftest import Client, MiB, digest_of, put_blobs

Req = re_pb2.BatchUpdateBlobsRequest.Request
UpdateResponse = re_pb2.BatchUpdateBlobsResponse.Response
ReadResponse = re_pb2.BatchReadBlobsResponse.Response
EMPTY = digest_of(b"")


async def test_find_missing_then_upload_then_find_none(storage_client: Client) -> None:
    a, b = b"alpha", b"beta" * 1000
    request = re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(a), digest_of(b), EMPTY])
    reply = await storage_client.cas.FindMissingBlobs(request)
    assert reply == re_pb2.FindMissingBlobsResponse(
        missing_blob_digests=[digest_of(a), digest_of(b)]
    )
    await put_blobs(storage_client, a, b)
    assert await storage_client.cas.FindMissingBlobs(request) == re_pb2.FindMissingBlobsResponse()


async def test_batch_update_reports_each_blob(storage_client: Client) -> None:
    good, bad = b"good", b"bad"
    wrong_hash = re_pb2.Digest(hash=digest_of(b"other").hash, size_bytes=3)
    wrong_size = re_pb2.Digest(hash=digest_of(bad).hash, size_bytes=4)
    reply = await storage_client.cas.BatchUpdateBlobs(
        re_pb2.BatchUpdateBlobsRequest(
            requests=[
                Req(digest=digest_of(good), data=good),
                Req(digest=wrong_hash, data=bad),
                Req(digest=wrong_size, data=bad),
            ]
        )
    )
    actual = digest_of(bad).hash
    assert reply == re_pb2.BatchUpdateBlobsResponse(
        responses=[
            UpdateResponse(digest=digest_of(good), status=status_pb2.Status()),
            UpdateResponse(
                digest=wrong_hash,
                status=status_pb2.Status(
                    code=code_pb2.INVALID_ARGUMENT,
                    message=f"Buffer has checksum {actual}, while {wrong_hash.hash} was expected",
                ),
            ),
            UpdateResponse(
                digest=wrong_size,
                status=status_pb2.Status(
                    code=code_pb2.INVALID_ARGUMENT,
                    message="Buffer is 3 bytes in size, while 4 bytes were expected",
                ),
            ),
        ]
    )
    missing = await storage_client.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=[digest_of(good), wrong_hash])
    )
    assert list(missing.missing_blob_digests) == [wrong_hash]


async def test_batch_read_found_and_missing(storage_client: Client) -> None:
    (present,) = await put_blobs(storage_client, b"here")
    absent = digest_of(b"not here")
    reply = await storage_client.cas.BatchReadBlobs(
        re_pb2.BatchReadBlobsRequest(digests=[present, absent, EMPTY])
    )
    assert reply == re_pb2.BatchReadBlobsResponse(
        responses=[
            ReadResponse(digest=present, data=b"here", status=status_pb2.Status()),
            ReadResponse(
                digest=absent,
                status=status_pb2.Status(
                    code=code_pb2.NOT_FOUND,
                    message=f"Blob {absent.hash}-{absent.size_bytes} not found",
                ),
            ),
            ReadResponse(digest=EMPTY, data=b"", status=status_pb2.Status()),
        ]
    )


async def test_batch_of_a_chunked_blob_round_trips(storage_client: Client) -> None:
    blob = bytes(range(256)) * (12 * 1024)  # 3 MiB: three chunk keys
    (d,) = await put_blobs(storage_client, blob)
    reply = await storage_client.cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[d]))
    assert reply.responses[0].data == blob


async def test_batch_over_the_limit_is_invalid_argument(storage_client: Client) -> None:
    blob = b"x" * (2 * MiB + 100 * 1024)  # two of them: over 4 MiB, under the message limit
    request = re_pb2.BatchUpdateBlobsRequest(
        requests=[
            Req(digest=digest_of(blob), data=blob),
            Req(digest=digest_of(blob[1:]), data=blob[1:]),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await storage_client.cas.BatchUpdateBlobs(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    limit = storage_client.config.max_batch_total_size
    assert info.value.details() == (
        f"Batch of {2 * len(blob) - 1} bytes exceeds the limit of {limit} bytes "
        "(max_batch_total_size_bytes); use ByteStream for large blobs"
    )
    read = re_pb2.BatchReadBlobsRequest(digests=[digest_of(blob), digest_of(blob[1:])])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await storage_client.cas.BatchReadBlobs(read)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("digest", "message"),
    [
        (re_pb2.Digest(hash="abc", size_bytes=1), "Unknown digest function"),
        (
            re_pb2.Digest(hash="A" * 64, size_bytes=1),
            "Non-hexadecimal character in digest hash: U+0041 'A'",
        ),
        (re_pb2.Digest(hash="a" * 64, size_bytes=-1), "Invalid digest size: -1 bytes"),
        (
            re_pb2.Digest(hash="a" * 40, size_bytes=1),
            "Unsupported digest function SHA1: this server stores SHA256 only",
        ),
    ],
)
async def test_malformed_digest_is_invalid_argument(
    redis_client: Client, digest: re_pb2.Digest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await redis_client.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(blob_digests=[digest])
        )
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


async def test_explicit_digest_function_checks_hash_length(redis_client: Client) -> None:
    request = re_pb2.FindMissingBlobsRequest(
        blob_digests=[re_pb2.Digest(hash="a" * 40, size_bytes=1)],
        digest_function=re_pb2.DigestFunction.SHA256,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await redis_client.cas.FindMissingBlobs(request)
    assert info.value.details() == "Hash has length 40, while 64 characters were expected"
    request = re_pb2.FindMissingBlobsRequest(digest_function=re_pb2.DigestFunction.BLAKE3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await redis_client.cas.FindMissingBlobs(request)
    assert (
        info.value.details() == "Unsupported digest function BLAKE3: this server stores SHA256 only"
    )


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        ("/a", 'Invalid instance name "/a": Instance name contains redundant slashes'),
        ("a//b", 'Invalid instance name "a//b": Instance name contains redundant slashes'),
        (
            "a/blobs",
            'Invalid instance name "a/blobs": Instance name contains reserved keyword "blobs"',
        ),
    ],
)
async def test_bad_instance_name(redis_client: Client, instance: str, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await redis_client.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(instance_name=instance)
        )
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


@pytest.mark.parametrize(
    ("compressor", "name"),
    [(re_pb2.Compressor.DEFLATE, "DEFLATE"), (re_pb2.Compressor.BROTLI, "BROTLI"), (99, "99")],
)
async def test_unsupported_batch_compressor_is_rejected(
    redis_client: Client, compressor: int, name: str
) -> None:
    d = digest_of(b"z")
    request = re_pb2.BatchUpdateBlobsRequest(
        requests=[Req(digest=d, data=b"z"), Req(digest=d, data=b"z", compressor=compressor)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await redis_client.cas.BatchUpdateBlobs(request)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Unsupported compressor {name} for blob {d.hash}-1: "
        "this server supports IDENTITY and ZSTD only",
    )
    missing = await redis_client.cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=[d])
    )
    assert list(missing.missing_blob_digests) == [d]


def _directory(
    files: dict[str, bytes] | None = None, dirs: dict[str, re_pb2.Digest] | None = None
) -> re_pb2.Directory:
    return re_pb2.Directory(
        files=[
            re_pb2.FileNode(name=n, digest=digest_of(b)) for n, b in sorted((files or {}).items())
        ],
        directories=[
            re_pb2.DirectoryNode(name=n, digest=d) for n, d in sorted((dirs or {}).items())
        ],
    )


async def _tree(client: Client) -> tuple[re_pb2.Digest, list[re_pb2.Directory]]:
    """root -> (a -> (c), b -> (c)); c is shared; BFS deduplicated: root, a, b, c."""
    c = _directory({"leaf": b"leaf"})
    (cd,) = await put_blobs(client, c.SerializeToString())
    a = _directory({"x": b"x"}, {"c": cd})
    b = _directory({"y": b"y"}, {"c": cd, "c2": cd})
    ad, bd = await put_blobs(client, a.SerializeToString(), b.SerializeToString())
    root = _directory({}, {"a": ad, "b": bd})
    (rd,) = await put_blobs(client, root.SerializeToString())
    return rd, [root, a, b, c]


async def test_get_tree_whole(storage_client: Client) -> None:
    root, expected = await _tree(storage_client)
    pages = [p async for p in storage_client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root))]
    assert pages == [re_pb2.GetTreeResponse(directories=expected)]


async def test_get_tree_paginated(storage_client: Client) -> None:
    root, expected = await _tree(storage_client)
    stream = storage_client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root, page_size=3))
    pages = [p async for p in stream]
    assert pages == [
        re_pb2.GetTreeResponse(directories=expected[:3], next_page_token="3"),
        re_pb2.GetTreeResponse(directories=expected[3:]),
    ]
    stream = storage_client.cas.GetTree(
        re_pb2.GetTreeRequest(root_digest=root, page_size=1, page_token="2")
    )
    assert [p async for p in stream] == [
        re_pb2.GetTreeResponse(directories=expected[2:3], next_page_token="3"),
        re_pb2.GetTreeResponse(directories=expected[3:]),
    ]


async def test_get_tree_missing_root_and_bad_token(storage_client: Client) -> None:
    root = digest_of(b"no such directory")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        [p async for p in storage_client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=root))]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    real_root, _ = await _tree(storage_client)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        request = re_pb2.GetTreeRequest(root_digest=real_root, page_token="nope")
        [p async for p in storage_client.cas.GetTree(request)]
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        'Invalid page token "nope"',
    )


async def test_get_tree_omits_missing_subtrees(storage_client: Client) -> None:
    gone = digest_of(_directory({"z": b"z"}).SerializeToString())
    root = _directory({}, {"gone": gone})
    (rd,) = await put_blobs(storage_client, root.SerializeToString())
    pages = [p async for p in storage_client.cas.GetTree(re_pb2.GetTreeRequest(root_digest=rd))]
    assert pages == [re_pb2.GetTreeResponse(directories=[root])]
