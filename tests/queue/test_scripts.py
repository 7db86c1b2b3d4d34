"""Script contracts: every header's KEYS/ARGV count matches its wrapper; one slot per call."""

from __future__ import annotations

import inspect
import re
from importlib import resources
from typing import Any

import pytest
from redis.crc import key_slot

from redbarn.proto import remote_execution_pb2 as re_pb2
from redbarn.queue import keys, replies
from redbarn.queue.scripts import SCRIPT_NAMES, Scripts, script_body

Stage = re_pb2.ExecutionStage


QM = b"2147483648000000001"  # priority 0, sequence 1
# One reply of each script, in the shape its header's `Returns:` line gives, and the
# record `redbarn.queue.replies` makes of it.
SAMPLES: dict[str, tuple[list[Any], Any]] = {
    "enqueue_operation": (
        [b"op", b"id", b"q", b"5", b"0", QM, b"", b"7", b"8", b"9", b""],
        replies.Enqueued("id", Stage.QUEUED, 5, 0, 0, "", 7, 8, 9, ""),
    ),
    "touch_operation": (
        [
            b"op",
            b"x",
            b"5",
            b"ab-3",
            b"1",
            b"",
            b"0",
            QM,
            b"/tinv",
            b"t",
            b"0000000000 {}",
            b"7",
            b"",
            b"s5 ",
            b"9",
        ],
        replies.OperationRead(
            Stage.EXECUTING,
            5,
            re_pb2.Digest(hash="ab", size_bytes=3),
            1,
            None,
            0,
            0,
            "/tinv",
            "t",
            "{}",
            7,
            None,
            "s5 ",
            9,
        ),
    ),
    "synchronize_worker": (
        [b"x", b"t", b"2", b"5", b"7", b"E"],
        replies.Assignment("t", 2, 5, 7, b"E"),
    ),
    "unpark_worker": ([b"i", b"7"], replies.Idle(7)),
    "reap_domain": ([1, 2, 3, 1, 0], replies.Reaped(1, 2, 3, True, False)),
    "kill_operation": ([b"ok", b"0000000002"], 2),
    "kill_queued": ([b"ok", 4, 0], replies.QueuedKilled("ok", 4, False)),
    "add_drain": ([b"ok"], True),
    "remove_drain": ([b"none"], False),
    "terminate_workers": ([2, b"t1"], replies.Terminated(2, ("t1",))),
    "declare_queue": ([b"ok", b"2"], 2),
    "wake_parked": ([b"w", b'0000000000 {"a":"1"}'], '0000000000 {"a":"1"}'),
}


class _Recorder:
    """Stands in for redis: register_script returns callables that record their calls
    and answer with the script's sample reply."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[Any]]] = []
        self.reply: list[Any] = []

    def register_script(self, _source: str) -> Any:
        async def run(keys: list[str], args: list[Any]) -> list[Any]:
            self.calls.append((keys, args))
            return self.reply

        return run


def _header(name: str) -> list[str]:
    lines = []
    for line in script_body(name).splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return lines


def test_every_lua_file_has_a_wrapper() -> None:
    files = {
        p.name[:-4] for p in resources.files("redbarn.lua").iterdir() if p.name.endswith(".lua")
    }
    assert files - {"_lib"} == set(SCRIPT_NAMES)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
async def test_header_matches_wrapper(name: str) -> None:
    header = _header(name)
    assert header[0].startswith(f"-- {name}.lua: ")
    assert any(line.startswith("-- Returns:") for line in header)
    text = "\n".join(header)
    key_ix = {int(i) for i in re.findall(r"KEYS\[(\d+)\]", text)}
    argv_ix = {int(i) for i in re.findall(r"ARGV\[(\d+)\]", text)}
    rec = _Recorder()
    rec.reply, decoded = SAMPLES[name]
    scripts = Scripts(rec)
    method = getattr(scripts, name)
    kwargs: dict[str, Any] = {}
    for pname, param in inspect.signature(method).parameters.items():
        if param.default is not inspect.Parameter.empty:
            continue  # optional extras (enqueue's required blobs) have their own tests
        ann = str(param.annotation)
        kwargs[pname] = (
            "0123456789abcdef"
            if pname == "domain"
            else 1
            if "int" in ann
            else False
            if "bool" in ann
            else b"x"
            if "bytes" in ann
            else "x"
        )
    assert await method(**kwargs) == decoded  # the wrapper returns the typed record
    ((call_keys, call_args),) = rec.calls
    assert key_ix == set(range(1, len(call_keys) + 1)), name
    assert argv_ix == set(range(1, len(call_args) + 1)), name
    # Every key of the call is in the domain's slot.
    assert len({key_slot(k.encode()) for k in call_keys}) == 1
    assert call_keys == keys.domain_keys("0123456789abcdef")


def test_domain_keys_share_one_slot() -> None:
    for domain in ("0123456789abcdef", keys.domain_id("main", "{}")):
        assert len({key_slot(k.encode()) for k in keys.domain_keys(domain)}) == 1


def test_no_key_names_built_in_lua() -> None:
    for name in (*SCRIPT_NAMES, "_lib"):
        body = script_body(name)
        assert "redbarn:v1:{" not in body, name
