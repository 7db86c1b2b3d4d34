"""`redbarn up` start and stop times (run by hand): `.venv/bin/python bench/up_bench.py`.

For each round it starts `redbarn up --workers 1` on a fresh data directory and prints
the seconds until the ready banner (which comes once the worker has synchronized), then
the seconds until every child is gone after SIGTERM; then it starts `up` again on the
same directory, SIGKILLs it, and prints the seconds until every child is gone (they die
with it, PR_SET_PDEATHSIG), and the seconds a third `up` on that directory takes to be
ready (it stops nothing: the children are gone already). Medians over `--rounds`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(data: Path) -> tuple[subprocess.Popen[str], float]:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "redbarn", "up", "--port", str(free_port()), "--workers", "1",
         "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Press Ctrl-C" in line:
            return proc, time.monotonic() - t0
    raise RuntimeError(f"up did not start: {proc.stderr.read() if proc.stderr else ''}")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def gone_after(kids: list[int], t0: float, limit: float = 60) -> float:
    def alive(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat[stat.rindex(")") + 2] != "Z"

    while any(alive(k) for k in kids):
        if time.monotonic() - t0 > limit:
            return float("inf")
        time.sleep(0.01)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cols: dict[str, list[float]] = {
        "ready (fresh dir)": [],
        "stopped by SIGTERM": [],
        "ready (restart)": [],
        "children gone after SIGKILL": [],
        "ready after a SIGKILL": [],
    }
    for _ in range(args.rounds):
        data = Path(tempfile.mkdtemp(prefix="rb-bench-", dir="/tmp"))
        try:
            proc, ready = start(data)
            cols["ready (fresh dir)"].append(ready)
            kids = children(proc.pid)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            cols["stopped by SIGTERM"].append(gone_after(kids, t0))
            proc, ready = start(data)
            cols["ready (restart)"].append(ready)
            kids = children(proc.pid)
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            cols["children gone after SIGKILL"].append(gone_after(kids, t0))
            proc, ready = start(data)
            cols["ready after a SIGKILL"].append(ready)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        finally:
            shutil.rmtree(data, ignore_errors=True)
    print(f"redbarn up, {args.rounds} rounds, {os.cpu_count()} CPUs (seconds: median, max)")
    for name, values in cols.items():
        print(f"  {name:30} {statistics.median(values):6.2f} {max(values):6.2f}")


if __name__ == "__main__":
    main()
