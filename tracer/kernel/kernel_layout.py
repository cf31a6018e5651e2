"""The one place that knows kernel struct offsets.

BPF code reads kernel memory at OFF_* constants; this module resolves each from
the running kernel's BTF and hands them to bcc as -D flags, the way CO-RE would.
Headers are never trusted for layouts: on a host whose headers describe another
kernel they compile fine and read the wrong bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.kernel.btf import Btf, BtfError


@dataclass(frozen=True)
class Field:
    macro: str
    struct: str
    path: str
    required: bool = True


FIELDS: tuple[Field, ...] = (
    Field("OFF_SKB_HEAD", "sk_buff", "head"),
    Field("OFF_SKB_DATA", "sk_buff", "data"),
    Field("OFF_SKB_LEN", "sk_buff", "len"),
    Field("OFF_SKB_NETWORK_HEADER", "sk_buff", "network_header"),
    Field("OFF_SKB_PROTOCOL", "sk_buff", "protocol"),
    Field("OFF_SKB_DEV", "sk_buff", "dev"),
    Field("OFF_SKB_END", "sk_buff", "end"),
    Field("OFF_SHINFO_GSO_SEGS", "skb_shared_info", "gso_segs"),
    # Absent without CONFIG_NF_CONNTRACK: NAT columns are then empty.
    Field("OFF_SKB_NFCT", "sk_buff", "_nfct", required=False),
    Field("OFF_DEV_IFINDEX", "net_device", "ifindex"),
    Field("OFF_DEV_NAME", "net_device", "name"),
    Field("OFF_DEV_ND_NET", "net_device", "nd_net.net"),
    Field("OFF_NET_INUM", "net", "ns.inum"),
    Field("OFF_CT_STATUS", "nf_conn", "status", required=False),
    Field("OFF_CT_ORIG_TUPLE", "nf_conn", "tuplehash[0].tuple", required=False),
    Field("OFF_CT_REPLY_TUPLE", "nf_conn", "tuplehash[1].tuple", required=False),
    Field("OFF_TUPLE_SRC_U3", "nf_conntrack_tuple", "src.u3", required=False),
    Field("OFF_TUPLE_SRC_ALL", "nf_conntrack_tuple", "src.u.all", required=False),
    Field("OFF_TUPLE_DST_U3", "nf_conntrack_tuple", "dst.u3", required=False),
    Field("OFF_TUPLE_DST_ALL", "nf_conntrack_tuple", "dst.u.all", required=False),
    Field("OFF_TUPLE_DST_PROTONUM", "nf_conntrack_tuple", "dst.protonum", required=False),
    # The context of BPF netfilter programs (kernel >= 6.4).
    Field("OFF_NFCTX_STATE", "bpf_nf_ctx", "state", required=False),
    Field("OFF_NFCTX_SKB", "bpf_nf_ctx", "skb", required=False),
    # A netfilter hook's state: read by both NAT mechanisms (bpf/netfilter.bpf.c).
    Field("OFF_NFSTATE_HOOK", "nf_hook_state", "hook", required=False),
    Field("OFF_NFSTATE_PF", "nf_hook_state", "pf", required=False),
    Field("OFF_NFSTATE_IN", "nf_hook_state", "in", required=False),
    Field("OFF_NFSTATE_OUT", "nf_hook_state", "out", required=False),
    Field("OFF_NFSTATE_NET", "nf_hook_state", "net", required=False),
)

CONNTRACK_MACROS = {f.macro for f in FIELDS if f.struct in ("nf_conn", "nf_conntrack_tuple")}
NF_CONTEXT_MACROS = {f.macro for f in FIELDS if f.struct == "bpf_nf_ctx"}
NF_STATE_MACROS = {f.macro for f in FIELDS if f.struct == "nf_hook_state"}


@dataclass(frozen=True)
class KernelLayout:
    offsets: dict[str, int]
    missing: tuple[str, ...]     # optional fields this kernel lacks, "struct.path"

    @property
    def has_conntrack(self) -> bool:
        return "OFF_SKB_NFCT" in self.offsets and self.offsets.keys() >= CONNTRACK_MACROS

    @property
    def has_netfilter_programs(self) -> bool:
        """BPF netfilter programs need bpf_nf_ctx (kernel >= 6.4)."""
        return self.offsets.keys() >= NF_CONTEXT_MACROS | NF_STATE_MACROS

    @property
    def has_nf_hook_state(self) -> bool:
        """What a probe on nf_hook_slow() reads: the hook, family, devices, netns."""
        return self.offsets.keys() >= NF_STATE_MACROS

    def cflags(self) -> list[str]:
        """-D flags for bcc.  Conntrack reads compile in only when every
        conntrack offset is known (OFF_SKB_NFCT gates them in the C)."""
        offsets = dict(self.offsets)
        if not self.has_conntrack:
            offsets.pop("OFF_SKB_NFCT", None)
        return [f"-D{name}={value}" for name, value in sorted(offsets.items())]


def resolve(btf: Btf) -> KernelLayout:
    """Every offset the BPF code uses; BtfError names a missing required one."""
    offsets: dict[str, int] = {}
    missing: list[str] = []
    for field in FIELDS:
        try:
            offsets[field.macro] = btf.offset_of(field.struct, field.path)
        except BtfError:
            if field.required:
                raise
            missing.append(f"{field.struct}.{field.path}")
    return KernelLayout(offsets, tuple(missing))


def drop_reasons(btf: Btf) -> dict[int, str]:
    """enum skb_drop_reason of the running kernel, e.g. {12: "NETFILTER_DROP"}:
    the numbering changes between kernels, so it is never copied from one."""
    try:
        return btf.enum("skb_drop_reason", strip_prefix="SKB_DROP_REASON_")
    except BtfError:
        return {}
