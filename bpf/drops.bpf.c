/* Packets the kernel dropped, with the running kernel's drop reason.
 * TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason,
 *          struct sock *rx_sk): a raw tracepoint, because the typed
 * tracepoint does not compile against headers that lack the enum. */
#include "skb.h"

int cntrace_drop(struct bpf_raw_tracepoint_args *ctx)
{
    struct cntrace_event e = {};
    u64 skb = ctx->args[0];
    u64 dev = 0;
    e.kind = EVENT_DROP;
    e.hook = HOOK_DROP;
    e.location = ctx->args[1];
    e.drop_reason = (u32)ctx->args[2];
    READ_KERNEL(dev, skb, OFF_SKB_DEV);
    return emit_skb_event(ctx, &e, skb, dev, 0, 0);
}
