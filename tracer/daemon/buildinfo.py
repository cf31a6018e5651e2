"""What cntrace_build_info says: the version, the git revision of the source
the package runs from, and the Python running it (the exporter-toolkit's
build_info, with pythonversion for goversion)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

from tracer import __version__

SOURCE_ROOT = Path(__file__).resolve().parents[2]
UNKNOWN = "unknown"


def git_revision(root: Path = SOURCE_ROOT) -> str:
    """The commit checked out at `root`, read from .git without running git
    (a checkout's HEAD, a branch's ref, or packed-refs); UNKNOWN for an
    installed wheel or anything unreadable."""
    git = root / ".git"
    try:
        if git.is_file():   # a worktree: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        for base in (git, _common_dir(git)):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(f" {ref}"):
                        return line.split()[0]
    except (OSError, IndexError):
        pass
    return UNKNOWN


def _common_dir(git: Path) -> Path:
    """A worktree's shared .git (its commondir file), else git itself."""
    common = git / "commondir"
    return (git / common.read_text().strip()).resolve() if common.is_file() else git


@functools.cache
def labels() -> dict[str, str]:
    return {"version": __version__, "revision": git_revision(),
            "pythonversion": platform.python_version()}
