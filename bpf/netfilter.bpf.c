/* The netfilter hops: the packet as NAT left it, with its conntrack entry and
 * the in/out devices the routing decision chose.  Never changes a verdict.
 *
 * Two mechanisms, chosen by tracer/kernel/loader.py from what the kernel offers
 * (tracer/kernel/features.py probes it) and compiled in alone, so a kernel without
 * one can never break the build of the other:
 *
 * NAT_VIA_NETFILTER_LINK (BPF_PROG_TYPE_NETFILTER, kernel >= 6.4): one program
 *   linked by tracer/kernel/bpflink.py at PRE_ROUTING and LOCAL_OUT just after DNAT,
 *   FORWARD just before the filter table, LOCAL_IN and POST_ROUTING just after
 *   SNAT.
 *
 * NAT_VIA_NF_HOOK_SLOW (fentry/fexit, where netfilter links are missing, e.g.
 *   Debian 12's 6.1): nf_hook_slow() runs every hook function of one hook, so
 *   its return is "after DNAT/SNAT" for PRE/IN/OUT/POST and its entry is
 *   "before the filter table" for FORWARD.  It runs in every netns and for
 *   every family; only the tracer's own netns (where a netfilter link would
 *   sit) and IPv4/IPv6 are kept.
 */
#include "skb.h"

#define NF_ACCEPT 1
#define NFPROTO_IPV4 2
#define NFPROTO_IPV6 10
#define NF_INET_PRE_ROUTING 0
#define NF_INET_LOCAL_IN 1
#define NF_INET_FORWARD 2
#define NF_INET_LOCAL_OUT 3
#define NF_INET_POST_ROUTING 4
#define HOOK_BIT(hook) (1 << (hook))

static __always_inline u8 nf_hook_to_event_hook(u8 hook)
{
    switch (hook) {
    case NF_INET_PRE_ROUTING: return HOOK_NF_PRE;
    case NF_INET_LOCAL_IN: return HOOK_NF_IN;
    case NF_INET_FORWARD: return HOOK_NF_FWD;
    case NF_INET_LOCAL_OUT: return HOOK_NF_OUT;
    default: return HOOK_NF_POST;
    }
}

static __always_inline int on_netfilter_hook(void *ctx, u64 skb, u64 state, u8 hook)
{
#ifdef COUNT_METRICS
    count_nat_at_hook(skb, nf_hook_to_event_hook(hook));   /* the daemon's NAT_IN_NETFILTER */
    return 0;
#else
    struct cntrace_event e = {};
    e.kind = EVENT_PACKET;
    e.hook = nf_hook_to_event_hook(hook);
    return emit_skb_event(ctx, &e, skb, 0, 0, state, 0);   /* devices read only if it passes */
#endif
}

#ifdef NAT_VIA_NETFILTER_LINK
int cntrace_netfilter(void *ctx)
{
    u64 state = *(u64 *)((u64)ctx + OFF_NFCTX_STATE);
    u64 skb = *(u64 *)((u64)ctx + OFF_NFCTX_SKB);
    u8 hook = 0;

    READ_KERNEL(hook, state, OFF_NFSTATE_HOOK);
    on_netfilter_hook(ctx, skb, state, hook);
    return NF_ACCEPT;
}
#endif

#ifdef NAT_VIA_NF_HOOK_SLOW
/* The hook number when this nf_hook_slow() call is one cntrace follows:
 * IPv4/IPv6 in the tracer's netns (TRACER_NETNS, the inode), else -1.  It
 * runs for every hook of every family in every netns, so the cheap checks
 * (the hook the caller wants, the family) come before the netns reads. */
static __always_inline int followed_hook(u64 state, u32 wanted_hooks)
{
    u8 hook = 0, pf = 0;
    u64 net = 0;
    u32 inum = 0;
    READ_KERNEL(hook, state, OFF_NFSTATE_HOOK);
    if (hook > NF_INET_POST_ROUTING || !(wanted_hooks & HOOK_BIT(hook)))
        return -1;
    READ_KERNEL(pf, state, OFF_NFSTATE_PF);
    if (pf != NFPROTO_IPV4 && pf != NFPROTO_IPV6)
        return -1;
    READ_KERNEL(net, state, OFF_NFSTATE_NET);
    READ_KERNEL(inum, net, OFF_NET_INUM);
    return inum == TRACER_NETNS ? hook : -1;
}

/* fexit: int nf_hook_slow(struct sk_buff *skb, struct nf_hook_state *state,
 *                         const struct nf_hook_entries *e, unsigned int s)
 * Only a return of 1 (every hook accepted) leaves the skb alive to read.
 * The daemon counts NAT at PRE, OUT and POST only; FORWARD is fentry's. */
#define NAT_HOOKS (HOOK_BIT(NF_INET_PRE_ROUTING) | HOOK_BIT(NF_INET_LOCAL_OUT) | \
                   HOOK_BIT(NF_INET_POST_ROUTING))
#ifdef COUNT_METRICS
#define FEXIT_HOOKS NAT_HOOKS
#else
#define FEXIT_HOOKS (NAT_HOOKS | HOOK_BIT(NF_INET_LOCAL_IN))
#endif
int kretfunc__nf_hook_slow(u64 *ctx)
{
    if ((int)ctx[4] != 1)
        return 0;
    int hook = followed_hook(ctx[1], FEXIT_HOOKS);
    if (hook < 0)
        return 0;
    return on_netfilter_hook(ctx, ctx[0], ctx[1], hook);
}

#ifndef COUNT_METRICS
/* fentry: FORWARD before the filter table decides (the daemon has no use). */
int kfunc__nf_hook_slow(u64 *ctx)
{
    if (followed_hook(ctx[1], HOOK_BIT(NF_INET_FORWARD)) < 0)
        return 0;
    return on_netfilter_hook(ctx, ctx[0], ctx[1], NF_INET_FORWARD);
}
#endif
#endif
