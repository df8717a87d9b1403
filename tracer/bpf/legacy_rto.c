/* legacy_rto.c -- sock_ops program (attached to a cgroup v2) that makes the initial
 * retransmission timeout of a handshake RTO_JIFFIES instead of 1 s, to emulate the 3 s initial
 * RTO of Linux < 3.1 (CentOS 5's 2.6.18; RFC 2988) on a modern kernel.
 *
 * The kernel asks BPF_SOCK_OPS_TIMEOUT_INIT from tcp_timeout_init() for sockets of processes in
 * the cgroup: on connect() (the SYN's RTO) and, for a listener created in the cgroup, on each
 * request (the SYN-ACK's RTO). The reply is in JIFFIES: 3 s = 3 * HZ (750 at HZ=250).
 *
 * Build-time options (-D): RTO_JIFFIES (required), PORT (remote port of active opens / local
 * port of passive ones to act on, host order; 0 = any).
 */
#include <uapi/linux/bpf.h>

#ifndef PORT
#define PORT 0
#endif

enum { ST_TIMEOUT_INIT, ST_APPLIED, ST_MAX };

BPF_ARRAY(stats, u64, ST_MAX);

static __always_inline void stat_inc(int i)
{
    u64 *v = stats.lookup(&i);
    if (v)
        __sync_fetch_and_add(v, 1);
}

int legacy_rto(struct bpf_sock_ops *skops)
{
    int reply = -1;  /* -1: keep the kernel's default */

    if (skops->op == BPF_SOCK_OPS_TIMEOUT_INIT) {
        stat_inc(ST_TIMEOUT_INIT);
        /* remote_port is in network byte order, local_port in host order */
        u32 rport = ntohl(skops->remote_port) & 0xffff;
        u32 lport = skops->local_port;
        if (PORT == 0 || rport == PORT || lport == PORT) {
            reply = RTO_JIFFIES;
            stat_inc(ST_APPLIED);
        }
    }
    skops->reply = reply;
    return 1;
}
