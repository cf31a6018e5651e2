/* The daemon's exact counters, compiled in only with -DCOUNT_METRICS (the
 * daemon build, whose only event stream is drops).
 *
 * Cost comes first: the daemon sees every packet on the host, so each hook
 * leaves at the first cheap check that says "nothing to count here" -- a
 * device that is not a container's, a packet whose conntrack entry has no
 * NAT -- before any header is parsed.
 *
 * Every packet is counted once per container and direction, by tcx on the
 * container's host-side veth: tx when it leaves the container, rx when it
 * arrives, however many hops it crosses on the host.
 * NAT is counted at the netfilter hooks that follow the NAT table, drops at
 * kfree_skb.  The daemon maps containers to slots through container_ifaces
 * and container_addrs and reads these maps at scrape time.
 */
#ifndef CNTRACE_ACCOUNTING_H
#define CNTRACE_ACCOUNTING_H

#ifndef MAX_CONTAINERS
#define MAX_CONTAINERS 4096
#endif
#ifndef FLOW_TABLE_SIZE
#define FLOW_TABLE_SIZE 65536
#endif
#define PEER_TABLE_SIZE 65536
#define IPS_SRC_NAT_BIT (1 << 4)
#define IPS_DST_NAT_BIT (1 << 5)
#define IP_CT_NEW 2
#define IP_CT_IS_REPLY 3

BPF_HASH(container_ifaces, struct iface_key, u32, MAX_CONTAINERS * 4);  /* drops */
BPF_HASH(container_addrs, struct addr_key, u32, MAX_CONTAINERS * 4);
BPF_HASH(host_addrs, struct addr_key, u8, 1024);
BPF_PERCPU_ARRAY(traffic, struct traffic, MAX_CONTAINERS * 2);   /* slot * 2 + direction */
BPF_PERCPU_HASH(peer_traffic, struct peer_key, struct traffic, PEER_TABLE_SIZE);
BPF_PERCPU_HASH(drops, struct drop_key, u64, 16384);
BPF_PERCPU_ARRAY(snat, struct traffic, MAX_CONTAINERS);
BPF_PERCPU_ARRAY(snat_translations, u64, MAX_CONTAINERS);
BPF_PERCPU_HASH(dnat, struct dnat_key, struct traffic, 16384);
BPF_PERCPU_HASH(dnat_translations, struct dnat_key, u64, 16384);
BPF_PERCPU_ARRAY(flows_opened, u64, MAX_CONTAINERS);
BPF_ARRAY(slot_generation, u32, MAX_CONTAINERS);   /* bumped each time a slot changes owner */
BPF_TABLE("lru_hash", struct flow_key, struct flow_value, flows, FLOW_TABLE_SIZE);

static __always_inline u32 *slot_of_addr(u8 *addr, u8 family)
{
    struct addr_key key = make_addr_key(addr, family);
    return container_addrs.lookup(&key);
}

static __always_inline int is_host_addr(u8 *addr, u8 family)
{
    struct addr_key key = make_addr_key(addr, family);
    return host_addrs.lookup(&key) != 0;
}

static __always_inline void add_traffic(struct traffic *t, u32 packets, u32 bytes)
{
    if (t) {
        t->packets += packets;
        t->bytes += bytes;
    }
}

static __always_inline void bump_peer(struct peer_key *key, u32 packets, u32 bytes)
{
    struct traffic zero = {};
    struct traffic *t = peer_traffic.lookup_or_try_init(key, &zero);
    if (!t)
        count_stat(STAT_COUNTER_UPDATE_FAILED);
    add_traffic(t, packets, bytes);
}

static __always_inline void bump_dnat(struct dnat_key *key, u32 packets, u32 bytes, int is_new)
{
    struct traffic zero = {};
    u64 none = 0;
    struct traffic *t = dnat.lookup_or_try_init(key, &zero);
    if (!t)
        count_stat(STAT_COUNTER_UPDATE_FAILED);
    add_traffic(t, packets, bytes);
    if (!is_new)
        return;
    u64 *count = dnat_translations.lookup_or_try_init(key, &none);
    if (count)
        *count += 1;
    else
        count_stat(STAT_COUNTER_UPDATE_FAILED);
}

static __always_inline void bump_drop(struct drop_key *key)
{
    u64 none = 0;
    u64 *count = drops.lookup_or_try_init(key, &none);
    if (count)
        *count += 1;
    else
        count_stat(STAT_COUNTER_UPDATE_FAILED);
}

/* Wire packets in this skb: a GSO super-packet counts as its segments. */
static __always_inline u32 skb_segments(u64 skb)
{
    u64 head = 0;
    u32 end = 0;
    u16 segs = 0;
    READ_KERNEL(head, skb, OFF_SKB_HEAD);
    READ_KERNEL(end, skb, OFF_SKB_END);
    READ_KERNEL(segs, head + end, OFF_SHINFO_GSO_SEGS);
    return segs ? segs : 1;
}

/* The remote end of a container's packet: another container's slot, the
 * host, or external. */
static __always_inline u32 resolve_peer(u8 *remote, u8 family)
{
    u32 *peer = slot_of_addr(remote, family);
    if (peer)
        return *peer;
    return is_host_addr(remote, family) ? PEER_HOST : PEER_EXTERNAL;
}

static __always_inline u32 generation_of(u32 peer)
{
    u32 *generation = peer < MAX_CONTAINERS ? slot_generation.lookup(&peer) : 0;
    return generation ? *generation : 0;
}

/* Look the packet's flow up (inserting it when new) and return its peer:
 * resolved once per flow, so the per-packet path skips two address lookups.
 * last_ns is written at most every FLOW_TOUCH_NS to keep the shared entry's
 * cache line quiet; "active" has a granularity of seconds anyway, so the
 * clock is the coarse one (tracer/wire.py flow_clock_ns): ~25 ns a packet
 * cheaper than bpf_ktime_get_ns. */
#define FLOW_TOUCH_NS 1000000000ULL

/* The last flow each CPU saw per container and direction.  A steady stream
 * hits it and skips the flow-table lookup (a hash of a 44-byte key, ~30 ns);
 * the table is still looked up once per FLOW_TOUCH_NS per CPU, which keeps
 * last_ns and the LRU order fresh, and whenever the peer's slot changed
 * owner. */
#define FLOW_CACHE_SIZE 1024
struct flow_cache_entry {
    struct flow_key key;
    u32 peer;
    u32 peer_generation;
    u64 checked_ns;
};
BPF_PERCPU_ARRAY(flow_cache, struct flow_cache_entry, FLOW_CACHE_SIZE);

static __always_inline int same_flow(struct flow_key *a, struct flow_key *b)
{
    u32 *x = (u32 *)a, *y = (u32 *)b;
    u32 diff = 0;
#pragma unroll
    for (int i = 0; i < sizeof(struct flow_key) / 4; i++)
        diff |= x[i] ^ y[i];
    return diff == 0;
}

static __always_inline u32 lookup_flow(struct flow_key *key, u8 *remote, u8 family, u64 now)
{
    u32 slot = key->owner;
    struct flow_value *value = flows.lookup(key);
    if (value && value->slot == slot) {
        if (now - value->last_ns > FLOW_TOUCH_NS)
            value->last_ns = now;
        if (value->peer_generation == generation_of(value->peer))
            return value->peer;
        value->peer = resolve_peer(remote, family);   /* the peer's slot changed owner */
        value->peer_generation = generation_of(value->peer);
        return value->peer;
    }
    struct flow_value fresh = {.first_ns = now, .last_ns = now, .slot = slot,
                               .peer = resolve_peer(remote, family)};
    fresh.peer_generation = generation_of(fresh.peer);
    int err = value ? flows.update(key, &fresh) : flows.insert(key, &fresh);
    if (err == 0) {
        count_stat(STAT_FLOW_INSERTS);
        u64 *opened = flows_opened.lookup(&slot);
        if (opened)
            *opened += 1;
    } else if (err != -17) {   /* -EEXIST: another CPU inserted it first */
        count_stat(STAT_FLOW_UPDATE_FAILED);
    }
    return fresh.peer;
}

static __always_inline u32 account_flow(struct cntrace_event *e, u32 slot, int rx)
{
    struct flow_key key = {.owner = slot, .proto = e->proto};
    u64 now = bpf_ktime_get_coarse_ns();
    u8 *remote = rx ? e->saddr : e->daddr;
    if (rx) {
        __builtin_memcpy(key.local_addr, e->daddr, 16);
        __builtin_memcpy(key.remote_addr, e->saddr, 16);
        key.local_port = e->dport;
        key.remote_port = e->sport;
    } else {
        __builtin_memcpy(key.local_addr, e->saddr, 16);
        __builtin_memcpy(key.remote_addr, e->daddr, 16);
        key.local_port = e->sport;
        key.remote_port = e->dport;
    }
    if (e->proto == PROTO_ICMP || e->proto == PROTO_ICMPV6) {
        key.local_port = e->sport;   /* echo id names the flow; seq does not */
        key.remote_port = 0;
    }
    u32 index = (slot * 2 + rx) & (FLOW_CACHE_SIZE - 1);
    struct flow_cache_entry *cached = flow_cache.lookup(&index);
    if (cached && now - cached->checked_ns < FLOW_TOUCH_NS && same_flow(&cached->key, &key) &&
        cached->peer_generation == generation_of(cached->peer))
        return cached->peer;
    u32 peer = lookup_flow(&key, remote, e->family, now);
    if (cached) {
        cached->key = key;
        cached->peer = peer;
        cached->peer_generation = generation_of(peer);
        cached->checked_ns = now;
    }
    return peer;
}

/* After SNAT (POSTROUTING) and after DNAT (PREROUTING, OUTPUT): packets of
 * translated connections in their original direction, and new bindings. */
static __always_inline void account_nat(struct cntrace_event *e, u64 skb, u32 bytes)
{
    read_conntrack(e, skb);
    if (!e->ct_proto || e->ct_info >= IP_CT_IS_REPLY)
        return;
    u32 packets = skb_segments(skb);
    if (e->hook == HOOK_NF_POST && (e->ct_status & IPS_SRC_NAT_BIT)) {
        u32 *slot = slot_of_addr(e->ct_orig_src, e->family);
        if (!slot)
            return;
        add_traffic(snat.lookup(slot), packets, bytes);
        if (e->ct_info == IP_CT_NEW) {
            u64 *count = snat_translations.lookup(slot);
            if (count)
                *count += 1;
        }
    } else if ((e->hook == HOOK_NF_PRE || e->hook == HOOK_NF_OUT) &&
               (e->ct_status & IPS_DST_NAT_BIT)) {
        u32 *slot = slot_of_addr(e->ct_reply_src, e->family);
        if (!slot)
            return;
        struct dnat_key key = {.slot = *slot, .port = e->ct_orig_dport, .proto = e->ct_proto};
        bump_dnat(&key, packets, bytes, e->ct_info == IP_CT_NEW);
    }
}

/* A drop belongs to the container whose interface the packet was on (a full
 * socket buffer in b is b's drop), else to the container named by its
 * addresses or, after SNAT, by its conntrack original source.  Returns 1 when
 * the daemon should also get an event: at most one per container and reason
 * a second, so a drop storm costs user space nothing. */
#define DROP_EVENT_INTERVAL_NS 1000000000ULL
BPF_HASH(drop_last_event, struct drop_key, u64, 16384);

static __always_inline int account_drop(struct cntrace_event *e, u64 skb, u64 dev)
{
    read_device(dev, &e->ifindex, &e->netns, 0);
    struct iface_key ikey = {.netns = e->netns, .ifindex = e->ifindex};
    u32 *slot = container_ifaces.lookup(&ikey);
    if (!slot)
        slot = slot_of_addr(e->saddr, e->family);
    if (!slot)
        slot = slot_of_addr(e->daddr, e->family);
    if (!slot) {
        read_conntrack(e, skb);
        if (e->ct_proto)
            slot = slot_of_addr(e->ct_orig_src, e->family);
    }
    if (!slot)
        return 0;
    struct drop_key key = {.slot = *slot, .reason = e->drop_reason};
    bump_drop(&key);
    u64 now = bpf_ktime_get_ns();
    u64 *last = drop_last_event.lookup(&key);
    if (last && now - *last < DROP_EVENT_INTERVAL_NS)
        return 0;
    drop_last_event.update(&key, &now);
    return 1;
}

/* tcx on a container's host-side veth: ingress is what the container sent,
 * egress what it receives.  Runs only on container veths (2 program runs per
 * packet instead of one per device hop) and reads the packet with
 * bpf_skb_load_bytes, not kernel-memory probes: the daemon's main path. */
BPF_HASH(tc_slots, u32, u32, MAX_CONTAINERS * 4);   /* host veth ifindex -> slot */

static __always_inline void count_tc(struct __sk_buff *skb, int rx)
{
    u32 ifindex = skb->ifindex;
    u32 *slot = tc_slots.lookup(&ifindex);
    if (!slot)
        return;
    struct cntrace_event e = {.hook = rx ? HOOK_TC_EGRESS : HOOK_TC_INGRESS};
    u8 l3[40] = {};
    u32 ihl = 40;
    if (skb->protocol == ETH_P_IP_BE) {
        if (bpf_skb_load_bytes(skb, 14, l3, 20))
            return;
        e.family = 4;
        e.proto = l3[9];
        __builtin_memcpy(e.saddr, &l3[12], 4);
        __builtin_memcpy(e.daddr, &l3[16], 4);
        ihl = (l3[0] & 0x0f) * 4;
        if ((l3[6] & 0x1f) | l3[7])
            e.proto = 0;   /* a non-first fragment: no ports */
    } else if (skb->protocol == ETH_P_IPV6_BE) {
        if (bpf_skb_load_bytes(skb, 14, l3, 40))
            return;
        e.family = 6;
        e.proto = l3[6];
        __builtin_memcpy(e.saddr, &l3[8], 16);
        __builtin_memcpy(e.daddr, &l3[24], 16);
    } else {
        return;
    }
    u16 ports[4] = {};
    if (e.proto && !bpf_skb_load_bytes(skb, 14 + (ihl & 0x7f), ports, 8)) {
        if (e.proto == PROTO_ICMP || e.proto == PROTO_ICMPV6) {
            e.sport = be16_to_host(ports[2]);   /* echo identifier */
        } else {
            e.sport = be16_to_host(ports[0]);
            e.dport = be16_to_host(ports[1]);
        }
    }
    u32 packets = skb->gso_segs ? skb->gso_segs : 1;
    u32 bytes = skb->len > 14 ? skb->len - 14 : 0;   /* IP-layer: less the Ethernet header */
    u32 index = *slot * 2 + rx;
    add_traffic(traffic.lookup(&index), packets, bytes);
    struct peer_key pkey = {.slot = *slot, .peer = account_flow(&e, *slot, rx),
                            .direction = rx};
    bump_peer(&pkey, packets, bytes);
}

/* Netfilter hooks: only packets whose conntrack entry carries the NAT this
 * hook follows (SNAT at POSTROUTING, DNAT at PREROUTING/OUTPUT). */
static __always_inline int count_nat(u64 skb, u8 hook)
{
#ifdef OFF_SKB_NFCT
    u64 nfct = 0, status = 0;
    u32 len = 0;
    u16 protocol = 0;
    READ_KERNEL(nfct, skb, OFF_SKB_NFCT);
    u64 ct = nfct & ~7ULL;
    if (!ct || (nfct & 7) >= IP_CT_IS_REPLY)
        return 0;
    READ_KERNEL(status, ct, OFF_CT_STATUS);
    u32 wanted = hook == HOOK_NF_POST ? IPS_SRC_NAT_BIT : IPS_DST_NAT_BIT;
    if (!(status & wanted))
        return 0;
    struct cntrace_event e = {.hook = hook};
    READ_KERNEL(protocol, skb, OFF_SKB_PROTOCOL);
    e.family = protocol == ETH_P_IPV6_BE ? 6 : 4;
    read_conntrack(&e, skb);
    READ_KERNEL(len, skb, OFF_SKB_LEN);   /* at the IP layer, skb->data is the IP header */
    account_nat(&e, skb, len);
#endif
    return 0;
}

#endif /* CNTRACE_ACCOUNTING_H */
