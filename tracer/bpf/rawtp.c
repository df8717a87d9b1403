/* rawtp.c — the TCP probes on raw tracepoints: the same kernel hooks as tcp.c, but the program
 * gets the tracepoint's arguments (TP_PROTO) instead of its formatted record, and reads the
 * socket through BTF offsets.
 *
 * Why they are preferred: a perf-event tracepoint program is skipped (counted only in its
 * recursion_misses) whenever its CPU is already running any BPF program, which happens when a
 * timer softirq (retransmits, SYN-ACK timers) interrupts another tracing program; with several
 * BPF tools on a busy machine whole waves of retransmits were missed. A raw tracepoint program
 * is skipped only if it interrupts itself. The argument counts (RAW_<event>_NARGS) come from
 * BTF (`btf_trace_<event>`), since some tracepoints gained arguments over time.
 */
#include "handlers.h"

#define RAW_ARG(ctx, i) (((struct bpf_raw_tracepoint_args *)(ctx))->args[i])

#ifdef USE_RAW_STATE_CHANGE
/* inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate) */
int raw_inet_sock_set_state(struct bpf_raw_tracepoint_args *ctx)
{
	struct st_tuple t = {};
	/* any inet protocol's state changes: handle_state() checks for TCP */
	return handle_state(ctx, (const void *)RAW_ARG(ctx, 0), (int)RAW_ARG(ctx, 1),
			    (int)RAW_ARG(ctx, 2), &t, 0, 0);
}
#endif

#ifdef USE_RAW_RETRANSMIT
/* tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb[, int err]) */
int raw_tcp_retransmit_skb(struct bpf_raw_tracepoint_args *ctx)
{
	const void *sk = (const void *)RAW_ARG(ctx, 0);
	struct st_tuple t = {};
	int err = 0;
#if RAW_tcp_retransmit_skb_NARGS >= 3
	err = (int)RAW_ARG(ctx, 2);
#endif
	return handle_retransmit(ctx, sk, sk_read_state(sk), err, &t, 0);
}
#endif

#ifdef USE_RAW_SYNACK_RETRANSMIT
/* tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req): a request
 * sock begins with a struct sock_common, so its tuple reads like a socket's. */
int raw_tcp_retransmit_synack(struct bpf_raw_tracepoint_args *ctx)
{
	struct st_tuple t = {};
	req_read_tuple((const void *)RAW_ARG(ctx, 1), &t);
	return handle_synack(ctx, (const void *)RAW_ARG(ctx, 0), &t);
}
#endif

#ifdef USE_RAW_RESET_SENT
/* tcp_send_reset(const struct sock *sk, const struct sk_buff *skb[, enum sk_rst_reason]) */
int raw_tcp_send_reset(struct bpf_raw_tracepoint_args *ctx)
{
	const void *sk = (const void *)RAW_ARG(ctx, 0);
	const void *skb = (const void *)RAW_ARG(ctx, 1);
	struct st_tuple t = {};
	int reason = 0;
#if RAW_tcp_send_reset_NARGS >= 3
	reason = (int)RAW_ARG(ctx, 2);
#endif
	/* the socket's state: read by handle_reset_sent() only if it is not tracked */
	return handle_reset_sent(ctx, sk, skb, STATE_UNKNOWN, reason, &t, 0);
}
#endif

#ifdef USE_RAW_RESET_RECEIVED
/* tcp_receive_reset(struct sock *sk) */
int raw_tcp_receive_reset(struct bpf_raw_tracepoint_args *ctx)
{
	struct st_tuple t = {};
	return handle_reset_received(ctx, (const void *)RAW_ARG(ctx, 0), &t, 0);
}
#endif

#ifdef USE_RAW_DROP
/* kfree_skb(struct sk_buff *skb, void *location[, enum skb_drop_reason[, struct sock *rx_sk]]) */
int raw_kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
	const void *rx_sk = NULL;
	int reason = -1;
#if RAW_kfree_skb_NARGS >= 3
	reason = (int)RAW_ARG(ctx, 2);
#endif
#if RAW_kfree_skb_NARGS >= 4
	rx_sk = (const void *)RAW_ARG(ctx, 3);
#endif
	return handle_drop(ctx, (const void *)RAW_ARG(ctx, 0), rx_sk, RAW_ARG(ctx, 1), reason);
}
#endif

#ifdef USE_RAW_CONN_LIFE
/* sock_recv_length(struct sock *sk, int ret, int flags) / sock_send_length(sk, ret, flags),
 * 6.3+: every recvmsg / sendmsg; a tracked connection's conversation (handle_io). One program
 * per raw tracepoint (BCC), so the accept wait's take-up is here too: a server's first read, or
 * its first write if it speaks first (a greeting). The connection is looked up anyway, so the
 * `pending_accepts` gate is not needed (nor kept: a counter every CPU writes costs a cache line
 * moving between them at each connection). */
static __always_inline int conn_io(void *ctx, int write)
{
	const void *sk = (const void *)RAW_ARG(ctx, 0);
	int ret = (int)RAW_ARG(ctx, 1);
	struct st_conn *c;
	u64 now;

	c = conn_find(sk);
	if (!c)
		return 0;
	if (c->role != ROLE_SERVER) {
		/* a client's first read and first write of data are its phases; nothing else */
		u64 *first = write ? &c->t_first_write : &c->t_first_read;
		if (ret > 0 && !*first)
			*first = bpf_ktime_get_ns();
		return 0;
	}
	now = bpf_ktime_get_ns();
#ifdef USE_RAW_ACCEPT_WAIT
	if (!(c->flags & CONN_ACCEPTED)) {
		take_up(ctx, c, now);
		if (!conn_is(c, sk))
			return 0; /* another task's: dropped */
	}
#endif
	if (ret <= 0)
		return 0; /* no data: an error, EAGAIN, the end of the stream */
	return handle_io(c, write, now);
}

int raw_conn_recv(struct bpf_raw_tracepoint_args *ctx)
{
	return conn_io(ctx, 0);
}

int raw_conn_send(struct bpf_raw_tracepoint_args *ctx)
{
	return conn_io(ctx, 1);
}
#endif

#if defined(USE_RAW_ACCEPT_WAIT) && !defined(USE_RAW_CONN_LIFE)
/* sock_recv_length(struct sock *sk, int ret, int flags), 6.3+: every recvmsg on a socket. The
 * server's first one on a server connection ends its wait: ESTABLISHED -> accept() and first
 * read, an upper bound of the accept-queue wait (equal to it for a server that reads right
 * after accept(), as request-response servers do). Only while some server connection waits
 * (pending_accepts > 0) does a call look its socket up. Not sock_send_length too: each probe
 * run costs ~0.1 us here whatever it does, and a recv per request is enough. */
int raw_sock_recv_length(struct bpf_raw_tracepoint_args *ctx)
{
	if (pending_count() <= 0)
		return 0; /* no server connection waits to be taken up: the common case */
	return handle_accepted(ctx, conn_find((const void *)RAW_ARG(ctx, 0)));
}
#endif
