"""The README's Repository section names every module of the five packages, and names nothing that does not exist.

How the section names a module (the convention this test reads; the section's first fenced block):
- a line whose first word ends in ``/`` opens a directory: at column 0 a top-level one (``service/``), indented a
  sub-directory of the nearest directory opened above it at a smaller indentation (``  http/`` under
  ``service/`` is ``service/http``; ``    runners/`` under ``  engine/`` is ``service/engine/runners``);
- every bare ``name.py`` word on a line names the module ``name.py`` of the directory the line sits in (the nearest
  directory opened above at a smaller indentation than the line; ``service/``'s own modules are indented under
  it), so ``web.py, static/`` names ``service/http/web.py`` and continuation lines, indented deeper, still count;
- a ``.py`` word with a ``/`` in it is refused: inside the block a module is named by its bare name, where it sits.
``__init__.py`` files need not be named. Every opened directory must exist, and every named module.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "service", "exporters", "loadtest", "fleet")
MODULE = re.compile(r"(?<![\w./*-])[A-Za-z_]\w*\.py\b")
SLASHED = re.compile(r"[\w*.-]+/[\w/*.-]*\.py\b")


def repository_block() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Repository\n")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end > 0 else None]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.S)
    assert blocks, "the Repository section has no fenced block"
    return str(blocks[0])


def named_paths(block: str) -> tuple[set[str], set[str], list[str]]:
    """(directories opened, modules named, slashed ``.py`` words) of the block, as paths from the repository root."""
    opened: list[tuple[int, str]] = []  # (indentation, directory) of the directories enclosing the current line
    directories: set[str] = set()
    modules: set[str] = set()
    slashed: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while opened and opened[-1][0] >= indent:
            opened.pop()
        first = line.split()[0]
        if first.endswith("/"):
            parent = opened[-1][1] + "/" if opened else ""
            directory = parent + first.rstrip("/")
            directories.add(directory)
            opened.append((indent, directory))
        slashed += SLASHED.findall(line)
        here = opened[-1][1] if opened else ""
        modules |= {f"{here}/{name}" if here else name for name in MODULE.findall(line)}
    return directories, modules, slashed


def existing_modules() -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    }


def test_the_convention_reads_nesting_and_continuations() -> None:
    block = "a/    one.py\n  b/  two.py, three.py\n    c/\n      four.py  text\n               five.py\n  six.py\n"
    directories, modules, slashed = named_paths(block)
    assert directories == {"a", "a/b", "a/b/c"}
    assert modules == {"a/one.py", "a/b/two.py", "a/b/three.py", "a/b/c/four.py", "a/b/c/five.py", "a/six.py"}
    assert slashed == []
    assert named_paths("a/  see x/y.py and */commands.py\n")[2] == ["x/y.py", "*/commands.py"]


def test_every_module_is_named() -> None:
    _, modules, _ = named_paths(repository_block())
    missing = sorted(existing_modules() - modules)
    assert not missing, f"modules the README's Repository section does not name: {missing}"


def test_everything_named_exists() -> None:
    directories, modules, slashed = named_paths(repository_block())
    assert not slashed, f"name modules by their bare name inside the package's block: {slashed}"
    absent = sorted(m for m in modules if not (ROOT / m).is_file())
    assert not absent, f"the README's Repository section names modules that do not exist: {absent}"
    gone = sorted(d for d in directories if not (ROOT / d).is_dir())
    assert not gone, f"the README's Repository section opens directories that do not exist: {gone}"
