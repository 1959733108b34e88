"""The README stays a short guide, and every link and path in the docs points at something that exists.

Links are checked as GitHub renders them: a relative target must be a file or folder of the repository, and
an anchor (`file.md#heading` or `#heading`) must be the slug of a heading in that file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 400
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
# Paths into the repository as the README writes them: a top-level folder of the project, then a path.
REPO_PATH = re.compile(r"(?<![\w./-])((?:vislora|samples|docs|bench|tests|recipes)/[\w./-]*)")
REPO_FILES = {"Makefile", "pyproject.toml", "README.md"}


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (headings and links in code are not headings and links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    links = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        links += [t for t in LINK.findall(line) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]
    return links


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it to {README_MAX_LINES}, move depth to docs/"


def test_readme_has_a_table_of_contents_that_resolves():
    text = README.read_text(encoding="utf-8")
    assert "## Contents" in text
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    targets = re.findall(r"\]\(#([^)]+)\)", contents)
    assert len(targets) >= 6
    assert set(targets) <= anchors(README)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists() or ROOT not in (dest, *dest.parents):
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_paths_the_readme_names_exist():
    text = README.read_text(encoding="utf-8")
    # In backticks and in the copy-paste commands alike: both must work on a fresh clone.
    named = {p.rstrip(".") for p in REPO_PATH.findall(text)}
    named |= {span for span in INLINE_CODE.findall(text) if span in REPO_FILES}
    assert len(named) >= 10, sorted(named)
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_slug_matches_github():
    assert slug("Job 1: fine-tune a ViT") == "job-1-fine-tune-a-vit"
    assert slug("The digits Stable Diffusion base (`samples/digits_sd/`)") == \
        "the-digits-stable-diffusion-base-samplesdigits_sd"
    assert slug("`vislora generate`") == "vislora-generate"
