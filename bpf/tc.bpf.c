/* The daemon's counting programs, linked by tracer/kernel/tclink.py: two on each
 * container's host-side veth, one on the egress of each of the host's exit
 * devices (where NAT is counted in tc).  Compiled only into the daemon
 * (COUNT_METRICS); they never change a verdict (TCX_NEXT). */
#include "skb.h"

#ifdef COUNT_METRICS
#define TCX_NEXT -1

int cntrace_tc_from_container(struct __sk_buff *skb)
{
    count_tc(skb, DIR_TX);
    return TCX_NEXT;
}

int cntrace_tc_to_container(struct __sk_buff *skb)
{
    count_tc(skb, DIR_RX);
    return TCX_NEXT;
}

#ifndef NAT_IN_NETFILTER
int cntrace_tc_leaving_host(struct __sk_buff *skb)
{
    count_leaving_host(skb);
    return TCX_NEXT;
}
#endif
#endif
