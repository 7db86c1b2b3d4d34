"""The README stays true: its configuration reference is what the parsers say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_matches_the_parsers() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config-reference")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- config-reference:begin -->\n", "<!-- config-reference:end -->"
    section = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert section == generated, "README is stale: run scripts/config-reference --write"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "```sh\nscripts/test\n```" in readme
    assert ci.rstrip().endswith("scripts/test")
