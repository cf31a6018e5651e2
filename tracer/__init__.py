"""cntrace: live eBPF tracer for container networking on Docker hosts."""

__version__ = "0.1.0"
