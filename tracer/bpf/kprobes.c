/* kprobes.c — kprobe/kretprobe and fentry/fexit variants, for kernels where a tracepoint is
 * missing or where a function probe gives better evidence (tcp_time_wait, inet_csk_accept, a
 * full accept queue). Each is a thin wrapper that takes the arguments out of pt_regs (kprobe) or
 * out of the u64 argument array (fentry/fexit, BCC's KFUNC_PROBE/KRETFUNC_PROBE: BPF
 * trampolines, 5.5+, cheaper than a kprobe's breakpoint or ftrace hop), reads the socket
 * through BTF offsets and calls the same body. On kernels without CONFIG_KPROBES the kprobe
 * variants are not attached, but the tests still load them so that the verifier checks them.
 * BCC attaches every KFUNC_PROBE/KRETFUNC_PROBE when the program is built, so an fentry
 * variant is compiled in only where tracer/probes.py found that this kernel takes one.
 */
#include <uapi/linux/ptrace.h>
#include "handlers.h"

#if defined(USE_FE_TIME_WAIT) || defined(USE_FE_ACCEPT_WAIT) || defined(USE_FE_LISTEN_OVERFLOW)
/* Argument i (or, after the arguments, the return value) of an fentry/fexit program as a plain
 * value: loaded straight from ctx a pointer argument is a BTF pointer (ptr_sock), on which the
 * verifier refuses the arithmetic conn_find() hashes it with ("pointer arithmetic with >>=
 * operator prohibited", 6.1); a copy read through bpf_probe_read_kernel is a number. */
static __always_inline const void *fe_arg(unsigned long long *ctx, int i)
{
	const void *p = NULL;
	bpf_probe_read_kernel(&p, sizeof(p), &ctx[i]);
	return p;
}
#endif

#ifdef USE_KP_RETRANSMIT
/* int tcp_retransmit_skb(struct sock *sk, struct sk_buff *skb, int segs) */
int kp_tcp_retransmit_skb(struct pt_regs *ctx)
{
	const void *sk = (const void *)PT_REGS_PARM1(ctx);
	struct st_tuple t = {};
	return handle_retransmit(ctx, sk, sk_read_state(sk), 0, &t, 0);
}
#endif

#ifdef USE_KP_SYNACK_RETRANSMIT
/* int tcp_rtx_synack(const struct sock *sk, struct request_sock *req): a request_sock begins
 * with a struct sock_common, so the tuple is read with the same offsets. */
int kp_tcp_rtx_synack(struct pt_regs *ctx)
{
	struct st_tuple t = {};
	req_read_tuple((const void *)PT_REGS_PARM2(ctx), &t);
	return handle_synack(ctx, (const void *)PT_REGS_PARM1(ctx), &t);
}
#endif

#ifdef USE_KP_STATE_CHANGE
/* void tcp_set_state(struct sock *sk, int state): called before the state changes */
int kp_tcp_set_state(struct pt_regs *ctx)
{
	const void *sk = (const void *)PT_REGS_PARM1(ctx);
	struct st_tuple t = {};
	return handle_state(ctx, sk, sk_read_state(sk), (int)PT_REGS_PARM2(ctx), &t, 0, 1);
}
#endif

#if defined(USE_KP_TIME_WAIT) || defined(USE_FE_TIME_WAIT)
/* void tcp_time_wait(struct sock *sk, int state, int timeo) */
static __always_inline int time_wait_entered(void *ctx, const void *sk)
{
	struct st_tuple t = {};
	u32 netns = 0;
	struct st_conn *c = conn_find(sk);
	if (c) {
		netns = c->netns;
		conn_tuple(c, &t);
	} else {
		sk_read_tuple(sk, &t);
		if (!sock_scope(sk, &t, &netns))
			return 0;
	}
	emit_time_wait(ctx, c, netns, &t, sk_read_state(sk));
	return 0;
}
#endif

#ifdef USE_KP_TIME_WAIT
int kp_tcp_time_wait(struct pt_regs *ctx)
{
	return time_wait_entered(ctx, (const void *)PT_REGS_PARM1(ctx));
}
#endif

#ifdef USE_FE_TIME_WAIT
KFUNC_PROBE(tcp_time_wait)
{
	return time_wait_entered(ctx, fe_arg(ctx, 0));
}
#endif

#if defined(USE_KP_ACCEPT_WAIT) || defined(USE_FE_ACCEPT_WAIT)
/* struct sock *inet_csk_accept(struct sock *sk, ...): the returned child socket */
static __always_inline int accepted(void *ctx, const void *newsk)
{
	if (!newsk || !task_in_scope(bpf_get_current_pid_tgid() >> 32))
		return 0;
	return handle_accepted(ctx, conn_find(newsk));
}
#endif

#ifdef USE_KP_ACCEPT_WAIT
int kretp_inet_csk_accept(struct pt_regs *ctx)
{
	return accepted(ctx, (const void *)PT_REGS_RC(ctx));
}
#endif

#ifdef USE_FE_ACCEPT_WAIT
/* the return value follows the arguments: 4 until 6.9 (sk, flags, err, kern), 2 since 6.10
 * (sk, struct proto_accept_arg *); FE_inet_csk_accept_NARGS comes from BTF */
KRETFUNC_PROBE(inet_csk_accept)
{
	return accepted(ctx, fe_arg(ctx, FE_inet_csk_accept_NARGS));
}
#endif

#if defined(USE_KP_LISTEN_OVERFLOW) || defined(USE_FE_LISTEN_OVERFLOW)
/* A SYN (tcp_conn_request) or a handshake's final ACK (tcp_v4_syn_recv_sock) reaching listener
 * `sk` while its accept queue is full: the kernel drops it (sk_acceptq_is_full() is the first
 * thing both check after the SYN-queue test; include/net/sock.h: sk_ack_backlog >
 * sk_max_ack_backlog, so listen(B) admits B + 1) and only counts ListenOverflows: the SYN's
 * drop has no drop reason on mainline kernels. The event names the listener and the client
 * from the packet (receiver's side: local = the listener): value = connections waiting,
 * value2 = the backlog, reason = 0 for a SYN, 1 for a final ACK. Nothing is sent while the
 * queue has room, which is every call but the overflowing ones. Not folded: each is a client's
 * SYN or ACK, and its retransmit comes a full RTO later. IPv6 final ACKs (tcp_v6_syn_recv_sock)
 * are not probed: only their ListenOverflows count tells. */
static __always_inline int listen_full(void *ctx, const void *sk, const void *skb, int final_ack)
{
	struct st_tuple t = {};
	struct st_event ev;
	u32 netns, queue = 0, backlog = 0;

#if OFF_SK_MAX_ACK_BACKLOG == OFF_SK_ACK_BACKLOG + 2
	bpf_probe_read_kernel(&queue, 2, (const char *)sk + OFF_SK_ACK_BACKLOG); /* u16 (old) */
	bpf_probe_read_kernel(&backlog, 2, (const char *)sk + OFF_SK_MAX_ACK_BACKLOG);
#else
	bpf_probe_read_kernel(&queue, 4, (const char *)sk + OFF_SK_ACK_BACKLOG);
	bpf_probe_read_kernel(&backlog, 4, (const char *)sk + OFF_SK_MAX_ACK_BACKLOG);
#endif
	if (queue <= backlog)
		return 0;
	if (skb_read_tuple(skb, &t) != ST_IPPROTO_TCP)
		return 0;
	if (!packet_ports_in_scope(t.sport, t.dport))
		return 0;
	netns = sk_netns(sk);
	if (!netns_in_scope(netns))
		return 0;
	fill_event(&ev, KIND_LISTEN_OVERFLOW, netns, &t);
	ev.state = final_ack ? ST_TCP_SYN_RECV : ST_TCP_LISTEN;
	ev.reason = final_ack;
	ev.value = queue;
	ev.value2 = backlog;
	submit_event(ctx, &ev);
	return 0;
}
#endif

#ifdef USE_KP_LISTEN_OVERFLOW
/* int tcp_conn_request(struct request_sock_ops *, const struct tcp_request_sock_ops *,
 *                      struct sock *sk, struct sk_buff *skb) */
int kp_tcp_conn_request(struct pt_regs *ctx)
{
	return listen_full(ctx, (const void *)PT_REGS_PARM3(ctx), (const void *)PT_REGS_PARM4(ctx), 0);
}

/* struct sock *tcp_v4_syn_recv_sock(const struct sock *sk, struct sk_buff *skb, ...): also for
 * the IPv4-mapped connections of an IPv6 listener (tcp_v6_syn_recv_sock calls it) */
int kp_tcp_v4_syn_recv_sock(struct pt_regs *ctx)
{
	return listen_full(ctx, (const void *)PT_REGS_PARM1(ctx), (const void *)PT_REGS_PARM2(ctx), 1);
}
#endif

#ifdef USE_FE_LISTEN_OVERFLOW
KFUNC_PROBE(tcp_conn_request)
{
	return listen_full(ctx, fe_arg(ctx, 2), fe_arg(ctx, 3), 0);
}

KFUNC_PROBE(tcp_v4_syn_recv_sock)
{
	return listen_full(ctx, fe_arg(ctx, 0), fe_arg(ctx, 1), 1);
}
#endif
