"""The running kernel and BPF: its BTF and struct offsets, the features it
offers, compiling and attaching the programs of bpf/, the wire structs
they share with Python.  Shared by every command."""
