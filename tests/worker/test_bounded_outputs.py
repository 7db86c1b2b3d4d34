"""Bounded outputs (issue 16 item 5): output files are counted before they are
hashed, stay on disk until uploaded, and stdout/stderr have a size limit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bounded_setup import peak_rss, real_workers
from google.rpc import code_pb2

from redbarn.errors import FailedPrecondition
from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.worker import outputs
from redbarn.worker.outputs import OutputLimits

SHA256 = re_pb2.DigestFunction.SHA256
MiB = 1 << 20


def _declared(*paths: str) -> outputs.Declared:
    return outputs.declared(re_pb2.Command(arguments=["true"], output_paths=list(paths)))


def _outputs(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    for i in range(3):
        (root / "dir" / "sub" / f"f{i}").write_bytes(b"x" * 100)
    (root / "dir" / "link").symlink_to("sub/f0")
    (root / "single").write_bytes(b"y" * 100)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (
            OutputLimits(files=4),
            "Action left more than 4 output files and symlinks, over --max-output-files 4",
        ),
        (
            OutputLimits(bytes=350),
            "Action left at least 400 bytes of output files, over --max-output-bytes 350",
        ),
    ],
)
def test_output_limits_are_checked_before_hashing(
    tmp_path: Path, limits: OutputLimits, message: str
) -> None:
    _outputs(tmp_path)
    with pytest.raises(FailedPrecondition) as caught:
        outputs.collect(str(tmp_path), _declared("dir", "single"), SHA256, limits)
    assert caught.value.message == message
    got = outputs.collect(str(tmp_path), _declared("dir", "single"), SHA256, OutputLimits(5, 400))
    assert [f.path for f in got.result.output_files] == ["single"]
    assert len(got.result.output_directories) == 1


def test_outputs_beyond_the_inline_budget_stay_on_disk(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    for i in range(100):
        (tmp_path / "out" / f"{i:03d}").write_bytes(bytes([i]) * (60 << 10))
    (tmp_path / "big").write_bytes(b"z" * (65 << 10))
    got = outputs.collect(str(tmp_path), _declared("out", "big"), SHA256)
    files = [b for b in got.blobs if b.digest.size_bytes >= 60 << 10]
    inline = [b for b in files if b.data is not None]
    assert len(files) == 101
    assert sum(b.digest.size_bytes for b in inline) <= outputs.INLINE_BUDGET
    assert all(b.digest.size_bytes <= outputs.INLINE_LIMIT for b in inline)
    assert [b.path for b in files if b.digest.size_bytes == 65 << 10] == [str(tmp_path / "big")]


def test_stdio_over_its_limit_is_named(tmp_path: Path) -> None:
    (tmp_path / "stderr").write_bytes(b"e" * 1025)
    with pytest.raises(FailedPrecondition) as caught:
        outputs.log_blob(str(tmp_path / "stderr"), SHA256, OutputLimits(stdio=1024))
    assert caught.value.message == (
        "Action wrote 1025 bytes to stderr, over --max-stdio-bytes 1KiB"
    )
    blob = outputs.log_blob(str(tmp_path / "stderr"), SHA256, OutputLimits(stdio=1025))
    assert blob is not None and blob.digest.size_bytes == 1025


WRITE_300 = (
    "import os\n"
    "os.makedirs('out', exist_ok=True)\n"
    "for i in range(300):\n"
    "    with open(f'out/{i:03d}', 'wb') as f:\n"
    "        f.write(os.urandom(1 << 20))\n"
)


@pytest.mark.system
async def test_real_worker_uploads_300_outputs_of_1mib_in_little_memory(
    redis_url: str, tmp_path: Path
) -> None:
    async with real_workers(redis_url, tmp_path) as setup:
        proc = await setup.start_worker("w1")
        response = await setup.run(
            [sys.executable, "-c", WRITE_300], output_paths=["out"], timeout=120
        )
        assert response.status.code == code_pb2.OK, response.status
        tree = re_pb2.Tree.FromString(
            setup.storage.get(response.result.output_directories[0].tree_digest)
        )
        assert len(tree.root.files) == 300
        assert all(len(setup.storage.get(f.digest)) == MiB for f in tree.root.files)
        assert len({f.digest.hash for f in tree.root.files}) == 300
        assert peak_rss(proc.pid) < 150 * MiB


@pytest.mark.system
async def test_real_worker_applies_its_output_flags(redis_url: str, tmp_path: Path) -> None:
    async with real_workers(redis_url, tmp_path) as setup:
        await setup.start_worker("w1", "--max-output-files", "1000", "--max-stdio-bytes", "1MiB")
        make = (
            "import os\nos.mkdir('out')\n"
            "for i in range(1001):\n    open(f'out/{i}', 'w').close()\nprint('made')\n"
        )
        response = await setup.run([sys.executable, "-c", make], output_paths=["out"], timeout=120)
        assert response.status.code == code_pb2.FAILED_PRECONDITION
        assert response.status.message == (
            "Failed to collect outputs: Action left more than 1000 output files and "
            "symlinks, over --max-output-files 1000"
        )
        assert setup.storage.get(response.result.stdout_digest) == b"made\n"
        assert not response.result.output_directories
        response = await setup.run(["sh", "-c", "head -c 1048577 /dev/zero"])
        assert response.status.code == code_pb2.FAILED_PRECONDITION
        assert response.status.message == (
            "Failed to collect outputs: Action wrote 1048577 bytes to stdout, "
            "over --max-stdio-bytes 1MiB"
        )
        # Exactly at the limits is fine.
        response = await setup.run(
            ["sh", "-c", "mkdir out && touch $(seq -f out/%g 1000) && head -c 1048576 /dev/zero"],
            output_paths=["out"],
        )
        assert response.status.code == code_pb2.OK, response.status
        assert len(setup.storage.get(response.result.stdout_digest)) == MiB
