/* tcp.c — TCP evidence from stable tracepoints: retransmits, SYN-ACK retransmits, state
 * changes (connection tracking), resets and drops with reason.
 *
 * Records are read at offsets taken from tracefs at run time (TPO_<event>_<field>, see
 * tracer/probes.py) rather than through BCC's generated structs, which do not compile for
 * every kernel (6.18's tcp_send_reset has an `enum sk_rst_reason` and sockaddr addresses).
 */
#include "common.h"

/* 4-tuple from a tcp/sock tracepoint record with sport/dport/family/saddr[4]/saddr_v6[16]. */
#define TP_TUPLE(ctx, ev, t)                                                             \
	do {                                                                             \
		(t).sport = TP_FIELD(ctx, u16, TPO_##ev##_sport);                         \
		(t).dport = TP_FIELD(ctx, u16, TPO_##ev##_dport);                         \
		(t).family = TP_FIELD(ctx, u16, TPO_##ev##_family);                       \
		if ((t).family == ST_AF_INET6) {                                         \
			bpf_probe_read_kernel((t).saddr, 16, (char *)(ctx) + TPO_##ev##_saddr_v6); \
			bpf_probe_read_kernel((t).daddr, 16, (char *)(ctx) + TPO_##ev##_daddr_v6); \
		} else {                                                                 \
			bpf_probe_read_kernel((t).saddr, 4, (char *)(ctx) + TPO_##ev##_saddr);     \
			bpf_probe_read_kernel((t).daddr, 4, (char *)(ctx) + TPO_##ev##_daddr);     \
		}                                                                        \
	} while (0)

#ifdef USE_TP_RETRANSMIT
int tp_tcp_retransmit_skb(void *ctx)
{
	struct st_tuple t = {};
	int err = 0;
	TP_TUPLE(ctx, tcp_retransmit_skb, t);
#ifdef TPO_tcp_retransmit_skb_err
	err = TP_FIELD(ctx, int, TPO_tcp_retransmit_skb_err);
#endif
	return handle_retransmit(ctx, TP_FIELD(ctx, void *, TPO_tcp_retransmit_skb_skaddr),
				 TP_FIELD(ctx, int, TPO_tcp_retransmit_skb_state), err, &t);
}
#endif

#ifdef USE_TP_SYNACK_RETRANSMIT
int tp_tcp_retransmit_synack(void *ctx)
{
	struct st_tuple t = {};
	TP_TUPLE(ctx, tcp_retransmit_synack, t);
	return handle_synack(ctx, TP_FIELD(ctx, void *, TPO_tcp_retransmit_synack_skaddr), &t);
}
#endif

#ifdef USE_TP_STATE_CHANGE
int tp_inet_sock_set_state(void *ctx)
{
	struct st_tuple t = {};
	if (TP_FIELD(ctx, u16, TPO_inet_sock_set_state_protocol) != ST_IPPROTO_TCP)
		return 0;
	TP_TUPLE(ctx, inet_sock_set_state, t);
	return handle_state(ctx, TP_FIELD(ctx, void *, TPO_inet_sock_set_state_skaddr),
			    TP_FIELD(ctx, int, TPO_inet_sock_set_state_oldstate),
			    TP_FIELD(ctx, int, TPO_inet_sock_set_state_newstate), &t);
}
#endif

/* netns of a packet: its socket's, else its device's (skb->dev->nd_net.net->ns.inum). */
static __always_inline u32 skb_netns(const void *skb, const void *sk)
{
	void *dev, *net;
	u32 inum = 0;
	if (!sk)
		sk = read_ptr(skb, OFF_SKB_SK);
	if (sk)
		return sk_netns(sk);
	dev = read_ptr(skb, OFF_SKB_DEV);
	net = read_ptr(dev, OFF_DEV_ND_NET);
	if (net)
		bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + OFF_NET_INUM);
	return inum;
}

#ifdef USE_TP_RESET_SENT
/* tcp_send_reset: sk may be NULL (a reset for a packet no socket wanted); since 6.10 the
 * addresses are sockaddr_in/sockaddr_in6 and there is an `enum sk_rst_reason`. */
int tp_tcp_send_reset(void *ctx)
{
	struct st_tuple t = {};
	const void *sk = TP_FIELD(ctx, void *, TPO_tcp_send_reset_skaddr);
	int state = ST_TCP_CLOSE, reason = 0;
	u32 netns;
#ifdef TPO_tcp_send_reset_sport
	TP_TUPLE(ctx, tcp_send_reset, t);
#else
	u16 port = 0;
	bpf_probe_read_kernel(&t.family, 2, (char *)ctx + TPO_tcp_send_reset_saddr);
	bpf_probe_read_kernel(&port, 2, (char *)ctx + TPO_tcp_send_reset_saddr + 2);
	t.sport = st_ntohs(port);
	bpf_probe_read_kernel(&port, 2, (char *)ctx + TPO_tcp_send_reset_daddr + 2);
	t.dport = st_ntohs(port);
	if (t.family == ST_AF_INET6) {
		bpf_probe_read_kernel(t.saddr, 16, (char *)ctx + TPO_tcp_send_reset_saddr + 8);
		bpf_probe_read_kernel(t.daddr, 16, (char *)ctx + TPO_tcp_send_reset_daddr + 8);
	} else {
		bpf_probe_read_kernel(t.saddr, 4, (char *)ctx + TPO_tcp_send_reset_saddr + 4);
		bpf_probe_read_kernel(t.daddr, 4, (char *)ctx + TPO_tcp_send_reset_daddr + 4);
	}
#endif
#ifdef TPO_tcp_send_reset_state
	state = TP_FIELD(ctx, int, TPO_tcp_send_reset_state);
#endif
#ifdef TPO_tcp_send_reset_reason
	reason = TP_FIELD(ctx, int, TPO_tcp_send_reset_reason);
#endif
	if (sk) {
		if (!sock_in_scope(sk, t.sport, t.dport, &netns))
			return 0;
	} else {
		if (!ports_in_scope(t.sport, t.dport))
			return 0;
		netns = skb_netns(TP_FIELD(ctx, void *, TPO_tcp_send_reset_skbaddr), NULL);
		if (!netns_in_scope(netns))
			return 0;
	}
	return handle_reset(ctx, KIND_RESET_SENT, sk, netns, state, reason, &t);
}
#endif

#ifdef USE_TP_RESET_RECEIVED
int tp_tcp_receive_reset(void *ctx)
{
	struct st_tuple t = {};
	const void *sk = TP_FIELD(ctx, void *, TPO_tcp_receive_reset_skaddr);
	u32 netns;
	TP_TUPLE(ctx, tcp_receive_reset, t);
	if (!sock_in_scope(sk, t.sport, t.dport, &netns))
		return 0;
	return handle_reset(ctx, KIND_RESET_RECEIVED, sk, netns, sk_read_state(sk), 0, &t);
}
#endif

#ifdef USE_TP_DROP
/* skb:kfree_skb with a drop reason. The record's `protocol` is the L3 ethertype, so the IP
 * header is read (skb->head + skb->network_header) to keep TCP only and get the ports.
 * The tuple is reported from the receiver's side: s = the packet's destination. */
int tp_kfree_skb(void *ctx)
{
	struct st_tuple t = {};
	struct st_event ev;
	const void *skb = TP_FIELD(ctx, void *, TPO_kfree_skb_skbaddr);
	const void *sk = NULL;
	u16 proto = TP_FIELD(ctx, u16, TPO_kfree_skb_protocol);
	u32 reason = 0, netns;
	u16 nhoff = 0, ports[2] = {};
	u8 b0 = 0, l4 = 0;
	char *head, *nh, *th;

#ifdef TPO_kfree_skb_reason
	reason = TP_FIELD(ctx, u32, TPO_kfree_skb_reason);
	if (reason <= SKB_CONSUMED_REASON || reason == DROP_REASON_QUEUE_PURGE)
		return 0; /* not a drop, or unread data discarded at close: not a lost packet */
#endif
	if (proto != 0x0800 && proto != 0x86DD)
		return 0;
	head = read_ptr(skb, OFF_SKB_HEAD);
	bpf_probe_read_kernel(&nhoff, 2, (char *)skb + OFF_SKB_NETWORK_HEADER);
	if (!head || nhoff == 0xFFFF)
		return 0;
	nh = head + nhoff;
	bpf_probe_read_kernel(&b0, 1, nh);
	if ((b0 >> 4) == 4) {
		bpf_probe_read_kernel(&l4, 1, nh + 9);
		bpf_probe_read_kernel(t.daddr, 4, nh + 12);
		bpf_probe_read_kernel(t.saddr, 4, nh + 16);
		t.family = ST_AF_INET;
		th = nh + (b0 & 0xF) * 4;
	} else if ((b0 >> 4) == 6) {
		bpf_probe_read_kernel(&l4, 1, nh + 6); /* no extension headers followed */
		bpf_probe_read_kernel(t.daddr, 16, nh + 8);
		bpf_probe_read_kernel(t.saddr, 16, nh + 24);
		t.family = ST_AF_INET6;
		th = nh + 40;
	} else {
		return 0;
	}
	if (l4 != ST_IPPROTO_TCP)
		return 0;
	bpf_probe_read_kernel(ports, 4, th);
	t.dport = st_ntohs(ports[0]);
	t.sport = st_ntohs(ports[1]);
	if (!ports_in_scope(t.sport, t.dport))
		return 0;
#ifdef TPO_kfree_skb_rx_sk
	sk = TP_FIELD(ctx, void *, TPO_kfree_skb_rx_sk);
#endif
	netns = skb_netns(skb, sk);
	if (!netns_in_scope(netns))
		return 0;
	fill_event(&ev, KIND_DROP, netns, &t);
	if (sk) {
		u64 key = (u64)sk;
		set_owner(&ev, conns.lookup(&key));
	}
	ev.reason = reason;
	ev.value = (s64)TP_FIELD(ctx, u64, TPO_kfree_skb_location);
	if (sk)
		ev.state = sk_read_state(sk);
	submit_event(ctx, &ev);
	return 0;
}
#endif
