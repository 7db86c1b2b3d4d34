"""ActionCache over a real channel: round trip, completeness check, inlining, errors."""

from __future__ import annotations

import grpc
import pytest

from redbarn.proto import remote_execution_pb2 as re_pb2

from .conftest import Client, digest_of, put_blobs

ACTION = digest_of(b"an action")


async def update(
    client: Client, result: re_pb2.ActionResult, instance: str = ""
) -> re_pb2.ActionResult:
    request = re_pb2.UpdateActionResultRequest(
        instance_name=instance, action_digest=ACTION, action_result=result
    )
    reply: re_pb2.ActionResult = await client.ac.UpdateActionResult(request)
    return reply


async def get(client: Client, instance: str = "", **inline: object) -> re_pb2.ActionResult:
    request = re_pb2.GetActionResultRequest(instance_name=instance, action_digest=ACTION, **inline)  # type: ignore[arg-type]
    reply: re_pb2.ActionResult = await client.ac.GetActionResult(request)
    return reply


async def full_result(
    client: Client, *, upload: bool = True
) -> tuple[re_pb2.ActionResult, dict[str, bytes]]:
    """A result with an output file, an output directory (Tree) and stdout/stderr."""
    blobs = {
        "out": b"output file",
        "inner": b"file inside the tree",
        "stdout": b"hello\n",
        "stderr": b"warn\n",
    }
    inner_dir = re_pb2.Directory(
        files=[re_pb2.FileNode(name="f", digest=digest_of(blobs["inner"]))]
    )
    tree = re_pb2.Tree(
        root=re_pb2.Directory(
            directories=[
                re_pb2.DirectoryNode(name="sub", digest=digest_of(inner_dir.SerializeToString()))
            ]
        ),
        children=[inner_dir],
    )
    blobs["tree"] = tree.SerializeToString()
    if upload:
        await put_blobs(client, *blobs.values())
    result = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path="out", digest=digest_of(blobs["out"]))],
        output_directories=[
            re_pb2.OutputDirectory(path="dir", tree_digest=digest_of(blobs["tree"]))
        ],
        exit_code=0,
        stdout_digest=digest_of(blobs["stdout"]),
        stderr_digest=digest_of(blobs["stderr"]),
        execution_metadata=re_pb2.ExecutedActionMetadata(worker="w1"),
    )
    return result, blobs


async def test_update_then_get(storage_client: Client) -> None:
    result, _ = await full_result(storage_client)
    assert await update(storage_client, result, "main") == result
    assert await get(storage_client, "main") == result


async def test_results_are_per_instance(storage_client: Client) -> None:
    result, _ = await full_result(storage_client)
    await update(storage_client, result, "a")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(storage_client, "b")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert (
        info.value.details()
        == f"Action result for action {ACTION.hash}-{ACTION.size_bytes} not found"
    )


@pytest.mark.parametrize("missing", ["out", "tree", "inner", "stdout", "stderr"])
async def test_incomplete_result_is_not_found(storage_client: Client, missing: str) -> None:
    result, blobs = await full_result(storage_client, upload=False)
    await put_blobs(storage_client, *[b for name, b in blobs.items() if name != missing])
    await update(storage_client, result)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(storage_client)
    gone = digest_of(blobs[missing])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == (
        f"Action result for action {ACTION.hash}-{ACTION.size_bytes} references blob "
        f"{gone.hash}-{gone.size_bytes}, which is not present in the Content Addressable Storage"
    )


async def test_root_directory_digest_is_walked(storage_client: Client) -> None:
    leaf = re_pb2.Directory(files=[re_pb2.FileNode(name="f", digest=digest_of(b"deep file"))])
    root = re_pb2.Directory(
        directories=[re_pb2.DirectoryNode(name="d", digest=digest_of(leaf.SerializeToString()))]
    )
    result = re_pb2.ActionResult(
        output_directories=[
            re_pb2.OutputDirectory(
                path="o", root_directory_digest=digest_of(root.SerializeToString())
            )
        ]
    )
    await put_blobs(storage_client, root.SerializeToString(), leaf.SerializeToString())
    await update(storage_client, result)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get(storage_client)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    await put_blobs(storage_client, b"deep file")
    assert await get(storage_client) == result


async def test_inlining(storage_client: Client) -> None:
    result, blobs = await full_result(storage_client)
    await update(storage_client, result)
    got = await get(
        storage_client, inline_stdout=True, inline_stderr=False, inline_output_files=["out", "nope"]
    )
    expected = re_pb2.ActionResult()
    expected.CopyFrom(result)
    expected.stdout_raw = blobs["stdout"]
    expected.output_files[0].contents = blobs["out"]
    assert got == expected


async def test_update_rejects_malformed_requests(redis_client: Client) -> None:
    bad = re_pb2.ActionResult(
        output_files=[re_pb2.OutputFile(path="x", digest=re_pb2.Digest(hash="zz", size_bytes=1))]
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await update(redis_client, bad)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Invalid action result: Hash has length 2, while 64 characters were expected",
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await redis_client.ac.UpdateActionResult(
            re_pb2.UpdateActionResultRequest(action_digest=ACTION)
        )
    assert info.value.details() == "No action result provided"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await redis_client.ac.GetActionResult(re_pb2.GetActionResultRequest())
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "No digest provided",
    )
