"""`redbarn.frontend.compression`: the bounded zstd decoder and its frame walker, fed real
zstd output (zstandard's own compressor) in pieces of every awkward size."""

from __future__ import annotations

import hashlib
import os

import pytest
import zstandard

from redbarn.digests import Digest
from redbarn.errors import InvalidArgument
from redbarn.frontend.compression import (
    BLOCK_MAXIMUM_SIZE,
    BLOCKS_PER_CALL,
    MAX_WINDOW_SIZE,
    ZstdDecoder,
    ZstdReader,
    compress_blob,
    decompress_blob,
)

MiB = 1 << 20
# The most one decompress call may return: whole blocks, plus a partial raw block (at
# most the input piece itself).
PER_CALL = BLOCKS_PER_CALL * BLOCK_MAXIMUM_SIZE


def text(size: int) -> bytes:
    return os.urandom(size // 2).hex().encode()


def skippable(payload: bytes) -> bytes:
    return (0x184D2A57).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def decode(data: bytes, compressed: bytes, piece: int) -> tuple[bytes, int]:
    """Feed `compressed` in `piece`-byte pieces; the output and its largest piece."""
    decoder = ZstdDecoder(Digest.of(data), len(data))
    out, largest = bytearray(), 0
    for start in range(0, len(compressed), piece):
        for chunk in decoder.feed(compressed[start : start + piece]):
            out += chunk
            largest = max(largest, len(chunk))
    decoder.finish()
    return bytes(out), largest


CASES = {
    "empty": (b"", {}),
    "one byte": (b"a", {}),
    "text": (text(700_000), {}),
    "text, checksum": (text(300_000), {"write_checksum": True}),
    "text, no content size": (text(300_000), {"write_content_size": False}),
    "zeros": (b"\0" * (5 * MiB), {}),
    "random": (os.urandom(MiB + 17), {}),
}


BYTE_BY_BYTE = ["empty", "one byte", "text, checksum", "zeros"]


@pytest.mark.parametrize(
    ("case", "piece"),
    [(case, 1) for case in BYTE_BY_BYTE]
    + [(case, piece) for case in CASES for piece in (5, 4096, 1 << 30)],
)
def test_decodes_in_any_pieces(case: str, piece: int) -> None:
    data, options = CASES[case]
    compressed = zstandard.ZstdCompressor(level=3, **options).compress(data)
    out, largest = decode(data, compressed, piece)
    assert out == data
    assert largest <= PER_CALL + piece


def test_streamed_frames_concatenated_frames_and_skippable_frames() -> None:
    data = text(400_000)
    stream = zstandard.ZstdCompressor(level=1).compressobj()
    streamed = stream.compress(data) + stream.flush()  # no content size in the header
    assert decode(data, streamed, 999)[0] == data
    mixed = compress_blob(data[:1000]) + skippable(b"ignored") + compress_blob(data[1000:])
    for piece in (1, 3, 64 * 1024):
        assert decode(data, mixed, piece)[0] == data


def test_a_bomb_is_stopped_at_the_declared_size() -> None:
    """256 MiB of zeros in one 8 KiB frame, declared as 1 MiB: refused after at most
    one call's worth of output past the declared size."""
    stream = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = b"\0" * MiB
    bomb = b"".join(stream.compress(zeros) for _ in range(256)) + stream.flush()
    assert len(bomb) < 16 * 1024
    digest = Digest(hashlib.sha256(zeros).hexdigest(), MiB)
    decoder = ZstdDecoder(digest, MiB)
    with pytest.raises(InvalidArgument) as info:
        for _ in decoder.feed(bomb):
            pass
    assert str(info.value) == (
        f"Compressed data for blob {digest} decompresses to more than the {MiB} bytes expected"
    )
    assert decoder.produced <= MiB + PER_CALL


def test_a_window_over_the_cap_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=MAX_WINDOW_SIZE.bit_length(), write_content_size=False
    )
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = text(2 * MAX_WINDOW_SIZE)
    compressed = stream.compress(data) + stream.flush()
    with pytest.raises(InvalidArgument) as info:
        decompress_blob(Digest.of(data), compressed)
    assert str(info.value) == (
        f"Compressed data for blob {Digest.of(data)} is not valid zstd: "
        "Frame requires too much memory for decoding"
    )


@pytest.mark.parametrize(
    ("compressed", "problem"),
    [
        (b"\x28\xb5\x2f\xfd\x08", "reserved bit set in a frame header"),
        (b"\x28\xb5\x2f\xfd\x20\x05\x07\x00\x00", "reserved block type"),
        (b"PK\x03\x04zipped", "unknown frame magic number 0x04034b50"),
        (compress_blob(b"abc" * 100)[:-2], "the stream ends inside a frame"),
        (skippable(b"only"), "the stream holds no frame"),
    ],
)
def test_malformed_streams(compressed: bytes, problem: str) -> None:
    digest = Digest.of(b"abc" * 100)
    with pytest.raises(InvalidArgument) as info:
        decompress_blob(digest, compressed)
    assert str(info.value) == f"Compressed data for blob {digest} is not valid zstd: {problem}"


def test_reader_makes_one_frame_with_the_content_size() -> None:
    data = text(3 * MiB)
    reader = ZstdReader(len(data))
    frame = b"".join(reader.compress(data[i : i + MiB]) for i in range(0, len(data), MiB))
    frame += reader.flush()
    assert zstandard.frame_content_size(frame) == len(data)
    assert zstandard.ZstdDecompressor().decompress(frame) == data
    assert decompress_blob(Digest.of(data), frame) == data
