"""The docs build: README.md and docs/*.md hang together.

* every relative link points to a file that exists, and every ``#anchor`` (in the same page or
  in another) names a heading of the target, slugged as GitHub slugs it;
* every ```python block compiles;
* README.md stays short (at most 250 lines) and keeps the two commands a newcomer runs.

The checkers are plain functions over text, so the tests at the end can feed each one a broken
page and see it fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
# Exactly as the README shows them (and the Makefile runs them; CI runs the second).
COMMANDS = (
    "make demo   # sets up .venv, runs `sasg compare` on the embedded MNIST-5k, writes runs/demo/",
    "make test   # sets up .venv, runs the test suite (pytest)",
)

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")


def split_fences(text: str) -> tuple[list[str], list[tuple[str, str, int]]]:
    """The lines outside fenced code blocks (blanked inside them, so line numbers hold) and the
    blocks themselves as (info string, body, first line)."""
    prose: list[str] = []
    blocks: list[tuple[str, str, int]] = []
    fence = None
    for n, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line.strip())
        if fence is None and m:
            fence, info, body, start = m.group(1), line.strip()[3:].strip(), [], n + 1
            prose.append("")
        elif fence is not None and line.strip().startswith(fence) and not line.strip()[3:].strip():
            blocks.append((info, "\n".join(body), start))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert fence is None, "a fenced code block is never closed"
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in split_fences(text)[0]:
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link outside code."""
    found = []
    for n, line in enumerate(split_fences(text)[0], 1):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((n, m.group(1)))
    return found


def broken_links(page: Path, text: str | None = None) -> list[str]:
    text = page.read_text() if text is None else text
    problems = []
    for n, target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}:{n}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest.read_text() if path else text):
                problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


def uncompilable_python(page: Path, text: str | None = None) -> list[str]:
    text = page.read_text() if text is None else text
    problems = []
    for info, body, start in split_fences(text)[1]:
        if info.split()[:1] not in (["python"], ["py"]):
            continue
        try:
            compile(body, f"{page.name}:{start}", "exec")
        except SyntaxError as e:
            problems.append(f"{page.relative_to(ROOT)}:{start + (e.lineno or 1) - 1}: {e.msg}")
    return problems


def readme_problems(text: str) -> list[str]:
    problems = []
    lines = text.split("\n")
    if text.endswith("\n"):
        lines = lines[:-1]
    if len(lines) > README_MAX_LINES:
        problems.append(f"README.md has {len(lines)} lines, more than {README_MAX_LINES}")
    blocks = [body.split("\n") for info, body, _ in split_fences(text)[1]]
    for command in COMMANDS:
        if not any(command in block for block in blocks):
            problems.append(f"README.md lacks the command line {command!r} in a code block")
    return problems


# ----- the pages as they are -----------------------------------------------------------------------

def test_there_are_pages():
    assert README in PAGES and len(PAGES) >= 5, PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile(page):
    assert uncompilable_python(page) == []


def test_readme_is_short_and_keeps_the_two_commands():
    assert readme_problems(README.read_text()) == []


def test_the_makefile_runs_the_readme_commands():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", make, re.M) and re.search(r"^test:", make, re.M)


def test_docs_named_in_the_code_exist():
    """Docstrings, help texts and comments name pages as ``docs/NAME.md``; each must exist."""
    named = set()
    for folder in ("src", "benchmarks", "tests", "examples"):
        for source in (ROOT / folder).rglob("*.py"):
            for name in re.findall(r"docs/([a-z0-9_-]+\.md)", source.read_text()):
                named.add((name, source.relative_to(ROOT)))
    assert named
    assert [(n, str(s)) for n, s in sorted(named) if not (ROOT / "docs" / n).exists()] == []


def test_docs_are_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README.read_text())}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"


# ----- each check can fail ---------------------------------------------------------------------------

def test_slugs_follow_github():
    assert slug("In a practitioner's job: tensor policy, warm-up, momentum and Adam") == (
        "in-a-practitioners-job-tensor-policy-warm-up-momentum-and-adam")
    assert slug("Noise-aware `wk1` and `ps`") == "noise-aware-wk1-and-ps"
    assert slug("How long `make demo` and `make test` take") == "how-long-make-demo-and-make-test-take"
    assert anchors("# A\n## A\n```bash\n# not a heading\n```\n") == {"a", "a-1"}


def test_a_missing_file_is_caught():
    page = ROOT / "docs" / "cli.md"
    assert broken_links(page, "see [x](no-such-page.md)\n")
    assert broken_links(page, "see [x](../docs/nope/cli.md#flags)\n")
    assert broken_links(page, "see [x](results.md)\n") == []


def test_a_missing_anchor_is_caught():
    page = ROOT / "docs" / "cli.md"
    assert broken_links(page, "see [x](results.md#no-such-heading)\n")
    assert broken_links(page, "see [x](#no-such-heading)\n# Title\n")
    assert broken_links(page, "see [x](results.md#determinism)\n") == []
    assert broken_links(page, "see [x](#title)\n# Title\n") == []


def test_links_in_code_are_not_links():
    page = ROOT / "docs" / "cli.md"
    assert broken_links(page, "`[x](nope.md)`\n```\n[x](nope.md)\n```\n") == []


def test_a_python_block_that_does_not_compile_is_caught():
    assert uncompilable_python(README, "```python\ndef f(:\n```\n")
    assert uncompilable_python(README, "```python\nx = 1\n```\n```bash\ndef f(:\n```\n") == []


def test_a_long_readme_or_a_lost_command_is_caught():
    good = README.read_text()
    assert readme_problems(good) == []
    assert readme_problems(good + "line\n" * README_MAX_LINES)
    assert readme_problems(good.replace(COMMANDS[1], "make check"))
    assert readme_problems(good.replace(COMMANDS[0], COMMANDS[0].replace("demo", "run", 1)))
