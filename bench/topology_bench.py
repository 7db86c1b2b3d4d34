"""Issue 19's scale-out check in one run (by hand): `.venv/bin/python bench/topology_bench.py
[--seconds 3] [--rounds 1]`.

Runs bench/frontend_bench.py once per topology, one after another, each with its own
redis-server, frontends and 80 synthetic workers, 100 Executes in flight for
`--seconds` (about 3,000 no-op actions each on the 2-core machine):

- one:    a single frontend; the load generator and every worker on it;
- split:  two frontends; every Execute through the first, every worker on the second
          (what a load balancer does to a build: the wake-up crosses frontends);
- spread: two frontends; Executes and workers alternate between them.

Prints, per topology: actions done, actions/s, p50/p99 and max latency, how many took
over 0.5 s, frontend and Redis CPU per action; then the issue's "done when" lines: one
frontend at least 1,000 actions/s, both two-frontend topologies at least 90% of one,
and no action over 1 s. The rounds repeat the three in order (one, split, spread, one,
...) so a slow minute on this shared machine shows as a spread, not as a verdict.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOPOLOGIES = ("one", "split", "spread")
ROW = re.compile(
    r"^\s+100\s+(?P<actions>\d+)\s+(?P<rate>\d+)\s+(?P<p50>[\d.]+)\s+[\d.]+\s+(?P<p99>[\d.]+)"
    r"\s+(?P<fe>[\d.]+)\s+\d+%/\d+\s*%\s+(?P<redis>[\d.]+)\s"
)
TAIL = re.compile(
    r"^\s+100 in flight: .*latency max (?P<max>\d+) ms, \d+ over 0.05s, (?P<slow>\d+) over "
    r"0.5s, .* (?P<never>\d+) never done"
)


@dataclass
class Result:
    topology: str
    actions: int
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    over_half_s: int
    never: int
    fe_ms: float
    redis_ms: float


def run(topology: str, seconds: float) -> Result:
    cmd = [
        sys.executable, str(HERE / "frontend_bench.py"), "--topology", topology,
        "--warmup", "2", "--seconds1", "1", "--seconds100", str(seconds),
        "--monitor", "1", "--no-profile",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    row = tail = None
    for line in out.stdout.splitlines():
        row = row or ROW.match(line)
        tail = tail or TAIL.match(line)
    if out.returncode != 0 or row is None or tail is None:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"frontend_bench.py --topology {topology} failed (rc {out.returncode})")
    return Result(
        topology,
        int(row["actions"]),
        float(row["rate"]),
        float(row["p50"]),
        float(row["p99"]),
        float(tail["max"]),
        int(tail["slow"]),
        int(tail["never"]),
        float(row["fe"]),
        float(row["redis"]),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds at 100 in flight")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    results: list[Result] = []
    print(
        f"{'topology':<8} {'actions':>7} {'actions/s':>9} {'x one':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'>0.5s':>5} {'never':>5} {'FE ms/act':>9} "
        f"{'redis ms/act':>12}",
        flush=True,
    )
    for _ in range(args.rounds):
        one: Result | None = None
        for topology in TOPOLOGIES:
            r = run(topology, args.seconds)
            results.append(r)
            one = r if topology == "one" else one
            ratio = r.rate / one.rate if one else 0.0
            print(
                f"{r.topology:<8} {r.actions:>7} {r.rate:>9.0f} {ratio:>6.2f} {r.p50_ms:>7.1f} "
                f"{r.p99_ms:>7.1f} {r.max_ms:>7.0f} {r.over_half_s:>5} {r.never:>5} "
                f"{r.fe_ms:>9.3f} {r.redis_ms:>12.3f}",
                flush=True,
            )
    total = sum(r.actions for r in results)
    slowest = max(r.max_ms for r in results)
    print(f"\n{total} actions in all; the slowest took {slowest:.0f} ms.")
    for i in range(args.rounds):
        by = {r.topology: r for r in results[i * 3 : i * 3 + 3]}
        one_rate = by["one"].rate
        checks = [
            ("one frontend >= 1000 actions/s", one_rate >= 1000),
            ("split >= 0.9 x one", by["split"].rate >= 0.9 * one_rate),
            ("spread >= 0.9 x one", by["spread"].rate >= 0.9 * one_rate),
            (
                "no action over 1 s, none unfinished",
                all(r.max_ms <= 1000 and r.never == 0 for r in by.values()),
            ),
        ]
        verdict = ", ".join(f"{what}: {'MET' if ok else 'MISSED'}" for what, ok in checks)
        print(f"round {i + 1}: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
