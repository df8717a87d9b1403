/* tcp.c — TCP evidence from stable tracepoints: retransmits, SYN-ACK retransmits, state
 * changes (connection tracking), resets and drops with reason.
 *
 * Records are read at offsets taken from tracefs at run time (TPO_<event>_<field>, see
 * tracer/probes.py) rather than through BCC's generated structs, which do not compile for
 * every kernel (6.18's tcp_send_reset has an `enum sk_rst_reason` and sockaddr addresses).
 */
#include "handlers.h"

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
				 TP_FIELD(ctx, int, TPO_tcp_retransmit_skb_state), err, &t, 1);
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
	return handle_reset_sent(ctx, sk, TP_FIELD(ctx, void *, TPO_tcp_send_reset_skbaddr), state,
				 reason, &t, 1);
}
#endif

#ifdef USE_TP_RESET_RECEIVED
int tp_tcp_receive_reset(void *ctx)
{
	struct st_tuple t = {};
	TP_TUPLE(ctx, tcp_receive_reset, t);
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
