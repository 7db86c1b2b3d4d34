"""The README and docs/ stay true: the configuration reference is what the parsers say,
the README's set-up and test commands are what CI runs, and every relative link lands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
README_LIMIT = 15_000  # characters: README.md is a user's page; the rest lives in docs/
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_config_reference_matches_the_parsers() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config-reference")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = CONFIGURATION.read_text()
    begin, end = "<!-- config-reference:begin -->\n", "<!-- config-reference:end -->"
    section = doc[doc.index(begin) + len(begin) : doc.index(end)]
    assert section == generated, (
        "docs/configuration.md is stale: run scripts/config-reference --write"
    )


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "```sh\nscripts/test\n```" in readme
    assert ci.rstrip().endswith("scripts/test")


def test_readme_set_up_installs_what_ci_installs() -> None:
    """README's set-up, then its test command, works on a fresh machine: the set-up
    installs the same extras as .ci/run (the `dev` extra holds pytest)."""
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"pip install (?:-\S+ )*-e '(\.\[[\w,-]+\])'", ci)
    assert match, ".ci/run no longer installs the package with `pip install -e '.[...]'`"
    extras = match.group(1)
    assert "dev" in extras
    readme = README.read_text()
    set_up = f"```sh\npython3 -m venv .venv\n.venv/bin/pip install -e '{extras}'\n```"
    assert set_up in readme, f"README.md must hold the set-up commands:\n{set_up}"
    assert "```sh\n.venv/bin/redbarn up\n```" in readme


def test_readme_is_a_short_page() -> None:
    size = len(README.read_text())
    assert size < README_LIMIT, f"README.md has {size} characters; move detail into docs/"


# Relative links ------------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    prose = _prose(text)
    return _LINK.findall(prose) + _REF_LINK.findall(prose)


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_link_checker_sees_links_and_anchors() -> None:
    text = (
        "# Top\n## `redbarn up` flags\n## Top\n"
        "[a](docs/x.md#y) ![i](img.png) `[no](code.md)`\n"
        "```\n[no](fenced.md)\n```\n[r]: ref.md\n"
    )
    assert links(text) == ["docs/x.md#y", "img.png", "ref.md"]
    assert anchors(text) == {"top", "redbarn-up-flags", "top-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    broken = []
    for target in links(page.read_text()):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(ROOT) or not dest.exists():
            broken.append(f"{target}: no such file in the repository")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_shows_what_up_prints() -> None:
    """The README's sample of `redbarn up`'s banner is what `up` prints (same words,
    same lines), rendered for the sample's port, thread count and data directory."""
    from redbarn import up

    data = Path("/home/me/.local/share/redbarn")
    expected = up.banner(
        8981,
        8,
        data,
        f"redis-cli -s {data / up.SOCKET_FILE}",
        up.bazel_flags(8981, "", []),
    )
    assert f"```\n{expected}\n```" in README.read_text()
