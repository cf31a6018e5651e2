/* The daemon's per-container traffic counters: tcx programs linked by
 * tracer/tclink.py to each container's host-side veth.  Compiled only into
 * the daemon (COUNT_METRICS); they never change a verdict (TCX_NEXT). */
#include "skb.h"

#ifdef COUNT_METRICS
#define TCX_NEXT -1

int cntrace_tc_from_container(struct __sk_buff *skb)
{
    count_tc(skb, 0);
    return TCX_NEXT;
}

int cntrace_tc_to_container(struct __sk_buff *skb)
{
    count_tc(skb, 1);
    return TCX_NEXT;
}
#endif
