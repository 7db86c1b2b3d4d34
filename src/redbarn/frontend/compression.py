"""zstd for the CAS wire (REAPI `Compressor.ZSTD`), streaming and bounded, on `zstandard`.

The BlobStore keeps blobs uncompressed; the CAS and ByteStream servicers compress on
the way out and decompress on the way in with these helpers.

- `ZstdReader` compresses a blob as its pieces arrive (one frame, content size in the
  header); memory is the compressor's window, never the blob.
- `ZstdDecoder` decompresses a stream fed piece by piece and never produces more than
  the digest's size: a zstd bomb (a few KiB inflating to gigabytes) is refused once it
  passes the declared size, before the excess exists. `zstandard`'s incremental
  decompressor has no output cap of its own, so the decoder walks the frame format
  (RFC 8878 §3.1) and feeds it at most `BLOCKS_PER_CALL` whole blocks per call: a
  block decompresses to at most 128 KiB (Block_Maximum_Size), so each call returns at
  most `BLOCKS_PER_CALL` x 128 KiB plus the raw bytes of a partial block. The
  decoder's window is capped at `MAX_WINDOW_SIZE`.

Errors are InvalidArgument naming the blob.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import zstandard

from redbarn.digests import Digest
from redbarn.errors import InvalidArgument

# Level 1, zstd's fastest standard level: the frontend's CPU is the scarce part, and
# REAPI lets the server choose the level per blob.
LEVEL = 1
# Largest window a compressed upload may ask the decoder for: 8 MiB, zstd level 19's
# (Bazel's zstd-jni default, level 3, uses 2 MiB). Larger windows (--long, --ultra)
# are refused with zstd's "Frame requires too much memory for decoding".
MAX_WINDOW_SIZE = 1 << 23
BLOCK_MAXIMUM_SIZE = 128 * 1024
BLOCKS_PER_CALL = 8  # at most 1 MiB of output per decompress call

_ZSTD_PREFIX = re.compile(r"^zstd decompress(or)? error: ")
_FRAME_MAGIC = 0xFD2FB528
_SKIPPABLE_MAGIC_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50


def _invalid(digest: Digest, problem: str) -> InvalidArgument:
    return InvalidArgument(f"Compressed data for blob {digest} is not valid zstd: {problem}")


class FrameWalker:
    """Tracks where zstd blocks end in a stream fed in arbitrary pieces.

    `block_ends(data)` yields the offsets within `data` just past each block, so a
    caller can cut its input there. `at_frame_end` is true between frames, which is
    where a complete stream stops. Only the framing is read here; the block contents
    are zstandard's to check.
    """

    def __init__(self, digest: Digest) -> None:
        self._digest = digest
        self._header = bytearray()
        self._want = 4  # bytes of the current header still to collect
        self._state = "magic"
        self._skip = 0  # content bytes of the current block or skippable frame left
        self._checksum = False
        self._last_block = False
        self.frames = 0

    @property
    def at_frame_end(self) -> bool:
        return self._state == "magic" and not self._header

    def block_ends(self, data: bytes | memoryview) -> Iterator[int]:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                pos, self._skip = pos + step, self._skip - step
                if self._skip == 0 and self._state == "block":
                    yield pos
                    self._after_block()
                elif self._skip == 0:  # the end of a skippable frame
                    self._expect("magic", 4)
                continue
            step = min(self._want - len(self._header), end - pos)
            self._header += data[pos : pos + step]
            pos += step
            if len(self._header) == self._want:
                header, self._header = bytes(self._header), bytearray()
                if self._parse(header):
                    yield pos  # an empty raw block ends with its header

    def _expect(self, state: str, size: int) -> None:
        self._state, self._want = state, size

    def _after_block(self) -> None:
        if not self._last_block:
            self._expect("block_header", 3)
        elif self._checksum:
            self._expect("checksum", 4)
        else:
            self._expect("magic", 4)

    def _parse(self, header: bytes) -> bool:
        """Act on a complete header; true when it completed a block with no content."""
        state = self._state
        if state == "magic":
            magic = int.from_bytes(header, "little")
            if magic & _SKIPPABLE_MAGIC_MASK == _SKIPPABLE_MAGIC:
                self._expect("skippable_size", 4)
            elif magic == _FRAME_MAGIC:
                self.frames += 1
                self._expect("descriptor", 1)
            else:
                raise _invalid(self._digest, f"unknown frame magic number 0x{magic:08x}")
        elif state == "skippable_size":
            self._skip = int.from_bytes(header, "little")
            self._state = "skippable"
            if self._skip == 0:
                self._expect("magic", 4)
        elif state == "descriptor":
            (descriptor,) = header
            fcs_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
            if descriptor & 0x08:
                raise _invalid(self._digest, "reserved bit set in a frame header")
            self._checksum = bool(descriptor & 0x04)
            dictionary_id = (0, 1, 2, 4)[descriptor & 0x03]
            content_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
            rest = (0 if single_segment else 1) + dictionary_id + content_size
            if rest:
                self._expect("frame_header", rest)
            else:
                self._expect("block_header", 3)
        elif state == "frame_header":
            self._expect("block_header", 3)
        elif state == "block_header":
            value = int.from_bytes(header, "little")
            self._last_block = bool(value & 1)
            block_type, size = (value >> 1) & 3, value >> 3
            if block_type == 3:
                raise _invalid(self._digest, "reserved block type")
            self._skip = 1 if block_type == 1 else size  # an RLE block holds one byte
            self._state = "block"
            if self._skip == 0:
                self._after_block()
                return True
        elif state == "checksum":
            self._expect("magic", 4)
        return False


class ZstdDecoder:
    """Decompresses one upload's zstd stream, fed piece by piece, into at most `limit`
    bytes (the digest's size less the offset the stream starts at)."""

    def __init__(self, digest: Digest, limit: int) -> None:
        self._digest = digest
        self._limit = limit
        self._walker = FrameWalker(digest)
        self._decompressor = zstandard.ZstdDecompressor(
            max_window_size=MAX_WINDOW_SIZE
        ).decompressobj(read_across_frames=True)
        self.produced = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decompressed bytes of `data`, in pieces of at most ~1 MiB.

        Raises InvalidArgument when the output would pass `limit` or the data is not zstd.
        """
        view = memoryview(data)
        start, blocks = 0, 0
        for end in self._walker.block_ends(view):
            blocks += 1
            if blocks == BLOCKS_PER_CALL:
                yield from self._decompress(view[start:end])
                start, blocks = end, 0
        if start < len(view):
            yield from self._decompress(view[start:])

    def _decompress(self, data: memoryview) -> Iterator[bytes]:
        try:
            out = self._decompressor.decompress(data)
        except zstandard.ZstdError as err:
            raise _invalid(self._digest, _ZSTD_PREFIX.sub("", str(err))) from None
        self.produced += len(out)
        if self.produced > self._limit:
            raise InvalidArgument(
                f"Compressed data for blob {self._digest} decompresses to more than the "
                f"{self._limit} bytes expected"
            )
        if out:
            yield out

    def finish(self) -> None:
        """Raise InvalidArgument unless the stream ended between frames."""
        if not self._walker.at_frame_end:
            raise _invalid(self._digest, "the stream ends inside a frame")
        if self._walker.frames == 0:
            raise _invalid(self._digest, "the stream holds no frame")


def decompress_blob(digest: Digest, data: bytes) -> bytes:
    """A batch entry's zstd data, decompressed into at most `digest.size_bytes` bytes."""
    decoder = ZstdDecoder(digest, digest.size_bytes)
    out = b"".join(decoder.feed(data))
    decoder.finish()
    return out


def compress_blob(data: bytes) -> bytes:
    """One zstd frame of `data` (a BatchReadBlobs answer)."""
    return zstandard.ZstdCompressor(level=LEVEL).compress(data)


class ZstdReader:
    """Compresses `size` bytes arriving in pieces into one zstd frame."""

    def __init__(self, size: int) -> None:
        compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
        self._stream = compressor.compressobj(size=size)

    def compress(self, piece: bytes) -> bytes:
        return self._stream.compress(piece)

    def flush(self) -> bytes:
        return self._stream.flush()
