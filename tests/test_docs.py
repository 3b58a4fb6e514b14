"""The docs cannot drift from the files and the CLIs: every relative link in README.md and docs/*.md resolves (file,
and heading for `#anchor`s into markdown), and every `fssam2`, `fssam2-export`, `fssam2-train`, `fssam2-engines`
command shown in a shell code block or inline code parses at `--help` level (its subcommand and every flag exist in
the parser of the module that pyproject's [project.scripts] names). Importing the four CLI modules takes a few
seconds (some import torch); nothing is run."""

from __future__ import annotations

import argparse
import importlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from unittest import mock

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`([^`]+)`")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
COMMAND_END = re.compile(r"&&|\|\||;")  # a shell command ends here; a lone | is an alternative in usage text
SHELL_COMMENT = re.compile(r"(^|\s)#.*$")
FLAG = re.compile(r"^(--?[A-Za-z][\w-]*)(=.*)?$")


@dataclass(frozen=True)
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def split_fences(text: str) -> tuple[list[tuple[int, str, list[str]]], str]:
    """Fenced code blocks as (first line number, language, lines), and the text with those blocks blanked (line
    numbers kept), for prose scanning."""
    blocks, prose, current, marker = [], [], None, ""
    for number, line in enumerate(text.split("\n"), 1):
        fence = FENCE.match(line)
        if current is None and fence:
            current, marker = (number + 1, fence.group(2).lower(), []), fence.group(1)
        elif current is not None and line.strip().startswith(marker):
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append(line)
        else:
            prose.append(line)
            continue
        prose.append("")
    return blocks, "\n".join(prose)


def without_inline_code(prose: str) -> str:
    return INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markdown links reduced to their text, lower case, punctuation dropped, spaces
    to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    _, prose = split_fences(text)
    seen: dict[str, int] = {}
    out = set()
    for line in prose.split("\n"):
        if m := HEADING.match(line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def check_links(text: str, path: Path) -> list[Problem]:
    """Every relative link (outside code) names an existing file, and a `#anchor` into markdown an existing heading."""
    prose = without_inline_code(split_fences(text)[1])
    problems = []
    for m in LINK.finditer(prose):  # a link's text may wrap onto the next line
        target, number = m.group(1), prose.count("\n", 0, m.start(1)) + 1
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        file = (path.parent / file_part).resolve() if file_part else path
        if file_part and not file.exists():
            problems.append(Problem(number, f"link {target!r}: {file_part} does not exist"))
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text() if file_part else text):
            problems.append(Problem(number, f"link {target!r}: no heading #{anchor} in {file.name}"))
    return problems


@cache
def script_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each console script's parser: the entry point's module, its `parser()`."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: parser_of(target.split(":")[0]) for name, target in scripts.items()}


def parser_of(module_name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(module_name)
    if hasattr(module, "parser"):
        return module.parser()

    # a CLI module that builds its parser inside main(): take it at parse_args, before anything runs
    class Captured(Exception):
        pass

    def capture(self, *args, **kwargs):
        raise Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), pytest.raises(Captured) as caught:
        module.main([])
    return caught.value.args[0]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def command_fragments(text: str) -> list[tuple[int, str]]:
    """Shell code (logical lines of shell blocks, `\\` continuations joined, comments dropped) and inline code."""
    blocks, prose = split_fences(text)
    fragments = []
    for first, language, lines in blocks:
        if language not in SHELL_LANGUAGES:
            continue
        start, pending = None, ""
        for offset, line in enumerate(lines):
            if start is None:
                start = first + offset
            stripped = SHELL_COMMENT.sub("", line).rstrip()
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            fragments.append((start, pending + stripped))
            start, pending = None, ""
        if pending:
            fragments.append((start, pending))
    for m in INLINE_CODE.finditer(prose):
        fragments.append((prose.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " ")))
    return fragments


def command_pattern(names) -> re.Pattern:
    alternatives = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    return re.compile(rf"(?<![\w./\-])({alternatives})(?=\s|$)")


def check_commands(text: str, parsers: dict[str, argparse.ArgumentParser]) -> list[Problem]:
    """Every command shown names an existing subcommand, and every flag exists for it."""
    pattern = command_pattern(parsers)
    problems = []
    for number, fragment in command_fragments(text):
        matches = list(pattern.finditer(fragment))
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(fragment)
            rest = fragment[m.end() : end]
            if stop := COMMAND_END.search(rest):
                rest = rest[: stop.start()]
            problems += [
                Problem(number, f"`{m.group(1)}{rest.rstrip()}`: {p}")
                for p in check_arguments(parsers[m.group(1)], rest.split())
            ]
    return problems


def check_arguments(parser: argparse.ArgumentParser, tokens: list[str]) -> list[str]:
    tokens = [t.strip("[](){}|,'\"`") for t in tokens]
    tokens = [t for t in tokens if t]
    known, problems = options(parser), []
    subs = subcommands(parser)
    while subs:
        positional = next((t for t in tokens if not t.startswith("-")), None)
        if positional is None or positional.startswith("..."):
            known |= {o for sub in subs.values() for o in options(sub)}  # `fssam2 ...`: any subcommand's flags
            break
        if positional not in subs:
            return [f"no subcommand {positional!r} (has: {', '.join(subs)})"]
        parser = subs[positional]
        known |= options(parser)
        tokens = tokens[tokens.index(positional) + 1 :]
        subs = subcommands(parser)
    for token in tokens:
        if (flag := FLAG.match(token)) and flag.group(1) not in known:
            problems.append(f"unknown flag {flag.group(1)}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc):
    problems = check_links(doc.read_text(), doc)
    assert not problems, f"{doc.relative_to(ROOT)}:\n" + "\n".join(map(str, problems))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_parse(doc):
    problems = check_commands(doc.read_text(), script_parsers())
    assert not problems, f"{doc.relative_to(ROOT)}:\n" + "\n".join(map(str, problems))


def test_docs_show_every_command():
    """The checker sees the commands (a pattern that matched nothing would pass every page)."""
    shown = {
        m.group(1)
        for doc in DOCS
        for _, fragment in command_fragments(doc.read_text())
        for m in command_pattern(script_parsers()).finditer(fragment)
    }
    assert shown == set(script_parsers())


def test_broken_links_are_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: with `code`\n")
    page = tmp_path / "page.md"
    good = "[a](other.md) [b](other.md#a-section-with-code) [c](#top) [d](https://example.com/x.md) `[e](nope.md)`"
    text = f"# Top\n\n{good}\n\n```\n[f](nope.md)\n```\n"
    assert check_links(text, page) == []
    bad = "[a](missing.md)\n[b](other.md#no-such-heading)\n[c](#nowhere)\n[d](sub/x.py) [wrapped\ntext](gone.md)\n"
    problems = check_links(f"# Top\n{bad}", page)
    assert [p.line for p in problems] == [2, 3, 4, 5, 6]
    assert "missing.md does not exist" in problems[0].message and "no heading #no-such-heading" in problems[1].message


def test_unknown_flags_and_subcommands_are_caught():
    parsers = script_parsers()
    good = (
        "```bash\nfssam2 segment --artifacts a/ --support s.png m.png \\\n"
        "    --query q.png --out o.png  # --bogus\n"
        "fssam2-export ... --precision int8 --out x/ && fssam2 info --artifacts x/\n```\n"
        "Use `fssam2 check --artifacts A --reference B [--episodes N]` or `pip install 'fssam2[bench]'`.\n"
    )
    assert check_commands(good, parsers) == []
    bad = (
        "```bash\nfssam2 segment --artifacts a/ \\\n    --no-such-flag 1\nfssam2 segmentt --artifacts a/\n"
        "fssam2-export --model t --precison fp16\n```\n"
        "Run `fssam2-train fit --data-root d/\n--stepz 5` and `fssam2-engines --artifacts a/ --max-shot 8`.\n"
        "```python\nprint('fssam2 segment --not-checked')\n```\n"
    )
    problems = [str(p) for p in check_commands(bad, parsers)]
    assert len(problems) == 5, problems
    assert "line 2" in problems[0] and "unknown flag --no-such-flag" in problems[0]
    assert "no subcommand 'segmentt'" in problems[1]
    assert "unknown flag --precison" in problems[2]
    assert "line 7" in problems[3] and "unknown flag --stepz" in problems[3]
    assert "unknown flag --max-shot" in problems[4]
