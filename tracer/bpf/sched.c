/* sched.c — run-queue delay of traced threads (sched_wakeup, sched_wakeup_new, sched_switch).
 *
 * A thread is traced once its process is (pids map: user-given or learned from a connect() or
 * accept() on a traced port) or it runs in the traced cgroup; sched_wakeup only names the woken
 * thread, so threads are remembered in `task_slots` when they are switched out. The delay runs from
 * the wakeup (or preemption: the tracepoint record's prev_state shows 0x100 = TASK_REPORT_MAX
 * on 6.x, the raw tracepoint has a `preempt` argument) to the thread's next sched_switch in.
 */
#include "handlers.h"

#if defined(USE_TP_RUNQ_DELAY) || defined(USE_RAW_RUNQ_DELAY)
static __always_inline int tracked_task(u32 tgid)
{
	u8 *f = pids.lookup(&tgid);
	if (f)
		return 1;
#ifdef FILTER_CGROUP
	return cgroup_filter.check_current_task(0) > 0;
#else
	return 0;
#endif
}

static __always_inline struct task_slot *slot_of(u32 tid)
{
	u32 idx = tid & (TASK_SLOTS - 1);
	return task_slots.lookup(&idx);
}

static __always_inline void trace_thread(u32 tid)
{
	struct task_slot *t = slot_of(tid);
	if (t && t->tid != tid) {
		t->tid = tid;
		t->runnable_since = 0;
	}
}

static __always_inline void mark_runnable(u32 tid)
{
	struct task_slot *t = slot_of(tid);
	if (t && t->tid == tid)
		t->runnable_since = bpf_ktime_get_ns();
}

static __always_inline int handle_wakeup_new(u32 tid)
{
	/* the parent runs here: a new thread or child of a traced process is traced too */
	if (tracked_task(bpf_get_current_pid_tgid() >> 32))
		trace_thread(tid);
	mark_runnable(tid);
	return 0;
}

/* `next_comm` points to the next task's name (in the record or in its task_struct);
 * `still_runnable`: prev was preempted, so its wait for the CPU starts now. */
static __always_inline int handle_switch(void *ctx, u32 prev, u32 next, int still_runnable,
					 const char *next_comm)
{
	struct task_slot *t;
	u64 since, now;

	if (prev) {
		t = slot_of(prev);
		/* current is still `prev` here, so its tgid and cgroup are at hand */
		if (t && t->tid != prev && tracked_task(bpf_get_current_pid_tgid() >> 32)) {
			t->tid = prev;
			t->runnable_since = 0;
		}
		if (t && t->tid == prev && still_runnable)
			t->runnable_since = bpf_ktime_get_ns();
	}
	t = slot_of(next);
	if (!t || t->tid != next || !t->runnable_since)
		return 0;
	since = t->runnable_since;
	t->runnable_since = 0;
	now = bpf_ktime_get_ns();
	if (now > since) {
		u64 d = now - since;
		hist_add(HIST_RUNQ, d);
		if (d > RUNQ_THRESHOLD_NS) {
			struct st_event ev;
			fill_event(&ev, KIND_RUNQ_DELAY, 0, NULL);
			ev.pid = next; /* the delayed thread, not the current one */
			bpf_probe_read_kernel(ev.comm, 16, next_comm);
			ev.value = d;
			ev.value2 = bpf_get_smp_processor_id();
			ev.t_ns = now;
			submit_event(ctx, &ev);
		}
	}
	return 0;
}
#endif

#ifdef USE_TP_RUNQ_DELAY
int tp_sched_wakeup(void *ctx)
{
	mark_runnable(TP_FIELD(ctx, u32, TPO_sched_wakeup_pid));
	return 0;
}

int tp_sched_wakeup_new(void *ctx)
{
	return handle_wakeup_new(TP_FIELD(ctx, u32, TPO_sched_wakeup_new_pid));
}

int tp_sched_switch(void *ctx)
{
	return handle_switch(ctx, TP_FIELD(ctx, u32, TPO_sched_switch_prev_pid),
			     TP_FIELD(ctx, u32, TPO_sched_switch_next_pid),
			     /* TASK_RUNNING (0), or TASK_REPORT_MAX (0x100) if preempted */
			     (TP_FIELD(ctx, long, TPO_sched_switch_prev_state) & 0xFF) == 0,
			     (char *)ctx + TPO_sched_switch_next_comm);
}
#endif

#ifdef USE_RAW_RUNQ_DELAY
/* raw tracepoints: sched_wakeup(_new)(struct task_struct *p); sched_switch(bool preempt,
 * struct task_struct *prev, struct task_struct *next, unsigned int prev_state) (5.18+). A
 * wakeup from an interrupt that lands inside another BPF program is not skipped here. */
static __always_inline u32 task_pid(const void *task)
{
	u32 pid = 0;
	bpf_probe_read_kernel(&pid, sizeof(pid), (char *)task + OFF_TASK_PID);
	return pid;
}

int raw_sched_wakeup(struct bpf_raw_tracepoint_args *ctx)
{
	mark_runnable(task_pid((const void *)ctx->args[0]));
	return 0;
}

int raw_sched_wakeup_new(struct bpf_raw_tracepoint_args *ctx)
{
	return handle_wakeup_new(task_pid((const void *)ctx->args[0]));
}

int raw_sched_switch(struct bpf_raw_tracepoint_args *ctx)
{
	const char *next = (const char *)ctx->args[2];
	/* preempted (even with a sleeping state set) or still TASK_RUNNING: on the run queue */
	return handle_switch(ctx, (u32)bpf_get_current_pid_tgid(), task_pid(next),
			     (u8)ctx->args[0] || ((u32)ctx->args[3] & 0xFF) == 0, next + OFF_TASK_COMM);
}
#endif
