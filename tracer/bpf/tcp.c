/* tcp.c — TCP evidence from stable tracepoints: retransmits, SYN-ACK retransmits, state
 * changes (connection tracking), resets and drops with reason.
 *
 * Records are read at offsets taken from tracefs at run time (TPO_<event>_<field>, see
 * tracer/probes.py) rather than through BCC's generated structs, which do not compile for
 * every kernel (6.18's tcp_send_reset has an `enum sk_rst_reason` and sockaddr addresses).
 */
#include "handlers.h"

/* 4-tuple from a tcp/sock tracepoint record with sport/dport/saddr[4]/saddr_v6[16], the
 * family given: TP_TUPLE takes it from the record's `family` field, TP_TUPLE_NO_FAMILY (tcp
 * records before `family` was added: 5.10 has none, 6.1 has it) derives it from saddr_v6,
 * which holds the socket's IPv6 address if it is AF_INET6 and its IPv4 address mapped
 * (::ffff:a.b.c.d, TP_STORE_V4MAPPED in include/trace/events/tcp.h, v5.10) if AF_INET. A mapped
 * address is read as AF_INET (so an AF_INET6 socket talking IPv4 is too), as analysis/load.py
 * reads mapped addresses anyway. Each caller picks one by `#ifdef TPO_<event>_family`. */
#define TP_TUPLE_ADDRS(ctx, ev, t)                                                       \
	do {                                                                             \
		(t).sport = TP_FIELD(ctx, u16, TPO_##ev##_sport);                         \
		(t).dport = TP_FIELD(ctx, u16, TPO_##ev##_dport);                         \
		if ((t).family == ST_AF_INET6) {                                         \
			bpf_probe_read_kernel((t).saddr, 16, (char *)(ctx) + TPO_##ev##_saddr_v6); \
			bpf_probe_read_kernel((t).daddr, 16, (char *)(ctx) + TPO_##ev##_daddr_v6); \
		} else {                                                                 \
			bpf_probe_read_kernel((t).saddr, 4, (char *)(ctx) + TPO_##ev##_saddr);     \
			bpf_probe_read_kernel((t).daddr, 4, (char *)(ctx) + TPO_##ev##_daddr);     \
		}                                                                        \
	} while (0)

#define TP_TUPLE(ctx, ev, t)                                                             \
	do {                                                                             \
		(t).family = TP_FIELD(ctx, u16, TPO_##ev##_family);                       \
		TP_TUPLE_ADDRS(ctx, ev, t);                                              \
	} while (0)

#define TP_TUPLE_NO_FAMILY(ctx, ev, t)                                                   \
	do {                                                                             \
		(t).family = tp_family_of_v6((char *)(ctx) + TPO_##ev##_saddr_v6);        \
		TP_TUPLE_ADDRS(ctx, ev, t);                                              \
	} while (0)

static __always_inline u16 tp_family_of_v6(const void *saddr_v6)
{
	u16 h[6] = {}; /* the first 96 bits: ::ffff:0:0/96 is 0 0 0 0 0 ffff in any byte order */

	bpf_probe_read_kernel(h, sizeof(h), saddr_v6);
	return (h[0] | h[1] | h[2] | h[3] | h[4]) == 0 && h[5] == 0xffff ? ST_AF_INET : ST_AF_INET6;
}

#ifdef USE_TP_RETRANSMIT
int tp_tcp_retransmit_skb(void *ctx)
{
	struct st_tuple t = {};
	int err = 0;
#ifdef TPO_tcp_retransmit_skb_family
	TP_TUPLE(ctx, tcp_retransmit_skb, t);
#else
	TP_TUPLE_NO_FAMILY(ctx, tcp_retransmit_skb, t);
#endif
#ifdef TPO_tcp_retransmit_skb_err
	err = TP_FIELD(ctx, int, TPO_tcp_retransmit_skb_err);
#endif
	return handle_retransmit(ctx, TP_FIELD(ctx, void *, TPO_tcp_retransmit_skb_skaddr),
				 TP_FIELD(ctx, int, TPO_tcp_retransmit_skb_state), err, &t, 1);
}
#endif

#ifdef USE_TP_SYNACK_RETRANSMIT
int tp_tcp_retransmit_synack(void *ctx)
{
	struct st_tuple t = {};
#ifdef TPO_tcp_retransmit_synack_family
	TP_TUPLE(ctx, tcp_retransmit_synack, t);
#else
	TP_TUPLE_NO_FAMILY(ctx, tcp_retransmit_synack, t);
#endif
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
			    TP_FIELD(ctx, int, TPO_inet_sock_set_state_newstate), &t, 1, 1);
}
#endif

#ifdef USE_TP_RESET_SENT
/* tcp_send_reset: sk may be NULL (a reset for a packet no socket wanted); since 6.10 the
 * addresses are sockaddr_in/sockaddr_in6 and there is an `enum sk_rst_reason`. */
int tp_tcp_send_reset(void *ctx)
{
	struct st_tuple t = {};
	const void *sk = TP_FIELD(ctx, void *, TPO_tcp_send_reset_skaddr);
	int state = ST_TCP_CLOSE, reason = 0;
#if defined(TPO_tcp_send_reset_sport) && defined(TPO_tcp_send_reset_family)
	TP_TUPLE(ctx, tcp_send_reset, t);
#elif defined(TPO_tcp_send_reset_sport)
	TP_TUPLE_NO_FAMILY(ctx, tcp_send_reset, t);
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
	return handle_reset_sent(ctx, sk, TP_FIELD(ctx, void *, TPO_tcp_send_reset_skbaddr), state,
				 reason, &t, 1);
}
#endif

#ifdef USE_TP_RESET_RECEIVED
int tp_tcp_receive_reset(void *ctx)
{
	struct st_tuple t = {};
#ifdef TPO_tcp_receive_reset_family
	TP_TUPLE(ctx, tcp_receive_reset, t);
#else
	TP_TUPLE_NO_FAMILY(ctx, tcp_receive_reset, t);
#endif
	return handle_reset_received(ctx, TP_FIELD(ctx, void *, TPO_tcp_receive_reset_skaddr), &t, 1);
}
#endif

#ifdef USE_TP_DROP
int tp_kfree_skb(void *ctx)
{
	const void *rx_sk = NULL;
	int reason = -1;
#ifdef TPO_kfree_skb_reason
	reason = TP_FIELD(ctx, u32, TPO_kfree_skb_reason);
#endif
#ifdef TPO_kfree_skb_rx_sk
	rx_sk = TP_FIELD(ctx, void *, TPO_kfree_skb_rx_sk);
#endif
	/* the record's `protocol` is the L3 ethertype: a cheap first filter */
	if (TP_FIELD(ctx, u16, TPO_kfree_skb_protocol) != 0x0800 &&
	    TP_FIELD(ctx, u16, TPO_kfree_skb_protocol) != 0x86DD)
		return 0;
	return handle_drop(ctx, TP_FIELD(ctx, void *, TPO_kfree_skb_skbaddr), rx_sk,
			   TP_FIELD(ctx, u64, TPO_kfree_skb_location), reason);
}
#endif
