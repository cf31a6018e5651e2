"""One exception root for everything cntrace reports to a user.

Each class carries the process exit code documented in README.md ("Exit codes"),
so the CLI turns any of them into one line on stderr and that code, never a
traceback.
"""


def one_line(text: str) -> str:
    """`text` as an error may echo it: control characters (a newline in a
    path or a key) escaped, so the error stays one line."""
    return text if text.isprintable() else repr(text)[1:-1]


class CntraceError(Exception):
    """A failure explained to the user in one line."""

    exit_code = 1


class UsageError(CntraceError):
    """Bad command-line input: unknown container, malformed address, bad port."""

    exit_code = 2


class PrivilegeError(CntraceError):
    """Not running as root (or without CAP_BPF/CAP_NET_ADMIN/CAP_PERFMON)."""

    exit_code = 3


class KernelFeatureError(CntraceError):
    """The running kernel lacks something needed: BTF, a tracepoint, a hook."""

    exit_code = 4


class DockerUnavailableError(CntraceError):
    """The Docker engine cannot be reached."""

    exit_code = 5


class UnsafeTargetError(CntraceError):
    """A send was refused: the destination does not route into our own namespaces."""

    exit_code = 6


class FigureError(CntraceError):
    """Graphviz is missing or failed: the figure cannot be drawn (the text and
    JSON topologies still can)."""

    exit_code = 7
