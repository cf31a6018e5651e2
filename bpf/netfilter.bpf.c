/* One BPF netfilter program (BPF_PROG_TYPE_NETFILTER, kernel >= 6.4), linked
 * at several hooks by tracer/nflink.py: PRE_ROUTING and LOCAL_OUT just after
 * DNAT, FORWARD just before the filter table, LOCAL_IN and POST_ROUTING just
 * after SNAT.  It sees the packet as NAT left it, with its conntrack entry,
 * and the in/out devices the routing decision chose.  It never changes a
 * verdict. */
#include "skb.h"

#define NF_ACCEPT 1

static __always_inline u8 nf_hook_to_event_hook(u8 hook)
{
    switch (hook) {
    case 0: return HOOK_NF_PRE;
    case 1: return HOOK_NF_IN;
    case 2: return HOOK_NF_FWD;
    case 3: return HOOK_NF_OUT;
    default: return HOOK_NF_POST;
    }
}

int cntrace_netfilter(void *ctx)
{
    struct cntrace_event e = {};
    u64 state = *(u64 *)((u64)ctx + OFF_NFCTX_STATE);
    u64 skb = *(u64 *)((u64)ctx + OFF_NFCTX_SKB);
    u8 hook = 0;

    READ_KERNEL(hook, state, OFF_NFSTATE_HOOK);
#ifdef COUNT_METRICS
    count_nat(skb, nf_hook_to_event_hook(hook));   /* the daemon only counts NAT here */
    return NF_ACCEPT;
#endif
    e.kind = EVENT_PACKET;
    e.hook = nf_hook_to_event_hook(hook);
    emit_skb_event(ctx, &e, skb, 0, 0, state);   /* devices read only if it passes */
    return NF_ACCEPT;
}
