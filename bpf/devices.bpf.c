/* Every packet leaving or arriving on any device, in every network namespace:
 * container eth0, both veth ends, bridges, uplinks.  Raw tracepoints, so no
 * kprobes are needed; ctx->args[] are the tracepoint's TP_PROTO arguments. */
#include "skb.h"

/* TP_PROTO(const struct sk_buff *skb, const struct net_device *dev).  Use
 * the dev argument: for a veth, skb->dev may already name the peer. */
int cntrace_dev_xmit(struct bpf_raw_tracepoint_args *ctx)
{
    struct cntrace_event e = {};
    u64 dev = ctx->args[1];
    e.kind = EVENT_PACKET;
    e.hook = HOOK_XMIT;
    return emit_skb_event(ctx, &e, ctx->args[0], dev, 0, 0, 0);
}

/* TP_PROTO(struct sk_buff *skb) */
int cntrace_dev_receive(struct bpf_raw_tracepoint_args *ctx)
{
    struct cntrace_event e = {};
    u64 skb = ctx->args[0];
    u64 dev = 0;
    e.kind = EVENT_PACKET;
    e.hook = HOOK_RECV;
    READ_KERNEL(dev, skb, OFF_SKB_DEV);
    return emit_skb_event(ctx, &e, skb, dev, 1, 0, 0);
}
