"""System tests start real processes; their logs are printed when a test fails."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/ holds shared helpers (cluster.py, reapi_client.py) imported as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAST = [
    "--worker-timeout", "3s", "--idle-sync-timeout", "2s", "--operation-retention", "3s",
    "--execution-update-interval", "5s", "--platform-queue-timeout", "60s",
]  # fmt: skip
