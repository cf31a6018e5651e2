/* Packets the kernel dropped, with the running kernel's drop reason.
 * TP_PROTO(struct sk_buff *skb, void *location, enum skb_drop_reason reason,
 *          struct sock *rx_sk): a raw tracepoint, because the typed
 * tracepoint does not compile against headers that lack the enum. */
#include "skb.h"

int cntrace_drop(struct bpf_raw_tracepoint_args *ctx)
{
    u64 skb = ctx->args[0];
    u64 dev = 0;
    int by_address = 0;
    READ_KERNEL(dev, skb, OFF_SKB_DEV);
#ifdef COUNT_METRICS
    /* The daemon counts every IP drop; one on a container's interface is
     * counted before any header is read or event set up, and most of them
     * end there. */
    int drop = count_drop_on_device(skb, dev, (u32)ctx->args[2]);
    if (drop == DROP_COUNTED)
        return 0;
    by_address = drop == DROP_UNATTRIBUTED;
#endif
    struct cntrace_event e = {};
    e.kind = EVENT_DROP;
    e.hook = HOOK_DROP;
    e.location = ctx->args[1];
    e.drop_reason = (u32)ctx->args[2];
    return emit_skb_event(ctx, &e, skb, dev, 0, 0, by_address);
}
