"""The tree is what README.md's layout says, and the tools stay leaves: the
shared packages import neither trace-ping nor the daemon, and neither tool
imports the other."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRACER = ROOT / "tracer"
SHARED = ("kernel", "host")
TOOLS = ("stream", "ping", "daemon")


def modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in TRACER.rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py")}


def readme_layout() -> set[str]:
    """Every file the layout table names: a package row (**`tracer/x/`**)
    holds the bare names in the rows under it."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named, package = set(), None
    for line in table.splitlines():
        cells = line.strip().strip("|").split("|")
        if not line.startswith("| ") or len(cells) < 2:
            continue
        first = cells[0]
        section = re.fullmatch(r"\s*\*\*`(tracer/\w+/)`\*\*\s*", first)
        if section:
            package = section.group(1)
            continue
        for name in re.findall(r"`([\w/.]+\.py)`", first):
            if name.startswith("tracer/"):
                named.add(name)
                package = None if name.count("/") == 1 else package
            elif package:
                named.add(package + name)
            else:
                named.add("tracer/" + name)
    return named


def test_the_readme_layout_is_the_tree():
    assert readme_layout() == modules()


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tracer"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tracer"))
    return found


def package_imports(package: str) -> set[str]:
    """The tracer packages `package`'s modules import, other than itself."""
    used = set()
    for path in (TRACER / package).glob("*.py"):
        for name in imports_of(path):
            parts = name.split(".")
            if len(parts) > 1 and parts[1] in (*SHARED, *TOOLS) and parts[1] != package:
                used.add(parts[1])
    return used


def test_the_shared_packages_import_no_tool():
    for package in SHARED:
        assert not package_imports(package) & {"ping", "daemon"}, package
    assert package_imports("kernel") <= {"host"}


def test_the_tools_are_leaves():
    assert "daemon" not in package_imports("ping")
    assert "ping" not in package_imports("daemon")
    assert not package_imports("stream") & {"ping", "daemon"}
