"""The manual keeps up with the code (as sqlite-utils' test_docs.py does).

Every command and option of `BatchProcess.py` is named in docs/commands.md, each command's options
in that command's section; every option the MPI launcher takes is named in docs/many-hosts.md;
every link from README.md and docs/*.md to a local file or heading leads somewhere; the README stays
a short newcomer's page and names the test command that `.ci/run` runs.
"""
import argparse
import ast
import inspect
import re
import sys
from pathlib import Path

import pytest

from support import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"
TEST_COMMAND = "bash .ci/install && .venv/bin/ruff check . && .venv/bin/python -m pytest"

sys.path.insert(0, str(ROOT / "lib"))
from batchUtility import mpi_launch  # noqa: E402
from batchUtility.cli import build_parser  # noqa: E402


def named(option: str, text: str) -> bool:
    """Whether `option` stands in `text` as a word of its own: `-q` inside `--quiet` does not count."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def subcommands():
    """(name, its parser) for each command of the command line."""
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return sorted(actions[0].choices.items())


def option_strings(parser: argparse.ArgumentParser):
    return sorted({s for action in parser._actions for s in action.option_strings})


def section(text: str, command: str) -> str:
    """The part of docs/commands.md under the heading naming `JOB command`, up to the next heading
    of its level or above."""
    match = re.search(rf"^(#+) .*`BatchProcess\.py JOB {command}`.*$", text, re.M)
    assert match, f"docs/commands.md has no heading for `BatchProcess.py JOB {command}`"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, match.end())
    return text[match.end():end.start() if end else len(text)]


def test_every_command_has_its_section_naming_its_options():
    """Each command's own options in its section; those every command takes (--config, -q, -v,
    --help) anywhere on the page (they have a section of their own)."""
    text = (DOCS / "commands.md").read_text()
    commands = subcommands()
    assert {name for name, _ in commands} >= {"new", "reset", "run", "status", "wipe"}
    shared = set.intersection(*(set(option_strings(parser)) for _, parser in commands))
    assert {"--config", "-q", "-v"} <= shared
    missing = [f"every command's {option}" for option in sorted(shared) if not named(option, text)]
    for name, parser in commands:
        part = section(text, name)
        missing += [f"{name} {option}" for option in option_strings(parser)
                    if option not in shared and not named(option, part)]
    assert not missing, f"not in their command's section of docs/commands.md: {missing}"


def test_every_option_of_the_main_parser_is_documented():
    text = (DOCS / "commands.md").read_text()
    options = option_strings(build_parser())
    assert "--version" in options
    assert [o for o in options if not named(o, text)] == []


def launcher_options():
    """The option words mpi_launch.parse_args recognises: it parses by hand, so they are the
    string literals starting with '-' that it compares arguments with (the job's name may not start with
'-', which is no option)."""
    tree = ast.parse(inspect.getsource(mpi_launch.parse_args))
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "startswith":
            parts = node.args
        else:
            continue
        for part in parts:
            for constant in ast.walk(part):
                if isinstance(constant, ast.Constant) and isinstance(constant.value, str) \
                        and constant.value.startswith("-") and len(constant.value) > 1:
                    words.add(constant.value)
    return sorted(words)


def test_launcher_options_found():
    """The walk above finds the options (so the next test cannot pass by finding none)."""
    words = launcher_options()
    assert {"--hostfile", "--config", "--dry-run", "-v", "-q"} <= set(words)
    for word in words:   # each is really taken by the launcher, not passed on to mpirun
        if word in ("-h", "--help", "--"):
            continue
        argv = ["job", word + "FILE"] if word.endswith("=") else ["job", word, "FILE"]
        assert word not in mpi_launch.parse_args(argv).extra


def test_every_launcher_option_is_documented():
    text = (DOCS / "many-hosts.md").read_text()
    missing = [w for w in launcher_options() if not named(w.rstrip("="), text)]
    assert not missing, f"options of bin/BatchProcess_mpi.sh not in docs/many-hosts.md: {missing}"


def pages():
    return [README, *sorted(DOCS.glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_lead_somewhere(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue   # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links leading nowhere: {broken}"


def test_docs_pages_are_linked_from_the_readme():
    text = README.read_text()
    unlinked = [p.name for p in DOCS.glob("*.md") if f"(docs/{p.name})" not in text]
    assert not unlinked, f"docs pages the README's 'where to read on' does not link: {unlinked}"


def test_readme_is_short_and_names_the_test_command():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert TEST_COMMAND in text
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()
