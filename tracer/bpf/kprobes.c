/* kprobes.c — kprobe/kretprobe variants, for kernels where a tracepoint is missing or where
 * kprobes give better evidence (tcp_time_wait, inet_csk_accept). Each is a thin wrapper that
 * reads the arguments from pt_regs and the socket through BTF offsets, then calls the same
 * handle_*() as the tracepoint probe. On kernels without CONFIG_KPROBES they are not attached,
 * but the tests still load them so that the verifier checks them.
 */
#include <uapi/linux/ptrace.h>
#include "handlers.h"

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

#ifdef USE_KP_TIME_WAIT
/* void tcp_time_wait(struct sock *sk, int state, int timeo) */
int kp_tcp_time_wait(struct pt_regs *ctx)
{
	const void *sk = (const void *)PT_REGS_PARM1(ctx);
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

#ifdef USE_KP_ACCEPT_WAIT
/* struct sock *inet_csk_accept(struct sock *sk, ...): the returned child socket */
int kretp_inet_csk_accept(struct pt_regs *ctx)
{
	const void *newsk = (const void *)PT_REGS_RC(ctx);
	if (!newsk || !task_in_scope(bpf_get_current_pid_tgid() >> 32))
		return 0;
	return handle_accepted(ctx, conn_find(newsk));
}
#endif
