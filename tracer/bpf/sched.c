/* sched.c — run-queue delay of traced threads, from the kernel's own accounting.
 *
 * The scheduler already measures every wait for a CPU: task_struct.sched_info.run_delay sums
 * them (from enqueue — a wakeup, or a preemption — to the switch in) and sched_info.pcount
 * counts the waits (CONFIG_SCHED_INFO: what /proc/<pid>/schedstat shows). So one probe is
 * enough: at each sched_switch, the thread switched out (the current task) has had exactly one
 * wait since its previous switch-out, the one before the run slice now ending; its length is
 * the growth of run_delay. It ended when the slice began: now minus the slice's CPU time
 * (se.sum_exec_runtime - se.prev_sum_exec_runtime). No wakeup probe; an untraced thread costs
 * two array lookups. The task that had the CPU when the wait ended is the one switched out for
 * it: with raw tracepoints, each switch notes in a per-CPU slot the incoming task's address and
 * the outgoing tid (no read); the thread switched out next on that CPU is the one that came in
 * (it ran in between), so its slot still names the holder. The event carries it in `reason`
 * (0: not known, or the CPU was idle).
 *
 * A thread is traced once its process is (pids map: user-given or learned from a connect() or
 * accept() on a traced port) or it runs in the traced cgroup; its first switch-out records a
 * baseline. A thread or child process created by a traced one is traced from birth
 * (sched_wakeup_new; its sched_info starts at zero).
 */
#include "handlers.h"

#if defined(USE_TP_RUNQ_DELAY) || defined(USE_RAW_RUNQ_DELAY)
static __always_inline int tracked_task(u32 tgid)
{
	if (pid_flags(tgid))
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

/* The parent runs here: a new thread or child of a traced process is traced too. */
static __always_inline int handle_wakeup_new(u32 tid)
{
	struct task_slot *t;
	u32 parent = bpf_get_current_pid_tgid() >> 32;
	if (!tracked_task(parent))
		return 0;
	inherit_user_pid(parent, tid);
	t = slot_of(tid);
	if (t) {
		t->tid = tid;
		t->pcount = 0;
		t->run_delay = 0;
	}
	return 0;
}

/* sched_info.pcount and .run_delay, read at once (adjacent in every kernel with sched_info) */
#if OFF_TASK_RUN_DELAY != OFF_TASK_SCHED_PCOUNT + 8
#error "task_struct.sched_info: run_delay does not follow pcount"
#endif
struct st_sched_info {
	u64 pcount;
	u64 run_delay;
};

/* The switch that put a task on this CPU (raw tracepoints: `next` and the tid switched out). */
struct switch_in {
	u64 next;
	u32 prev;
	u32 pad;
};
BPF_PERCPU_ARRAY(switched_in, struct switch_in, 1);

/* The thread that had this CPU when `task`, running now, was switched in; 0 if not known. */
static __always_inline u32 holder_of(const char *task)
{
	u32 zero = 0;
	struct switch_in *s = switched_in.lookup(&zero);
	return s && s->next == (u64)task ? s->prev : 0;
}

static __always_inline int handle_switch_out(void *ctx)
{
	u64 id = bpf_get_current_pid_tgid(), d, n;
	u32 tid = id;
	const char *task;
	struct task_slot *t;
	struct st_sched_info si = {};

	if (!tid)
		return 0; /* the idle task */
	t = slot_of(tid);
	if (!t)
		return 0;
	if (t->tid != tid && !tracked_task(id >> 32))
		return 0;
	task = current_task();
#ifdef ST_TASK_BTF
	si.pcount = TASK_U64(task, OFF_TASK_SCHED_PCOUNT);
	si.run_delay = TASK_U64(task, OFF_TASK_RUN_DELAY);
#else
	bpf_probe_read_kernel(&si, sizeof(si), task + OFF_TASK_SCHED_PCOUNT); /* both in one read */
#endif
	if (t->tid != tid) {
		t->tid = tid; /* first switch-out seen: the baseline */
		t->pcount = si.pcount;
		t->run_delay = si.run_delay;
		return 0;
	}
	n = si.pcount - t->pcount;
	d = si.run_delay - t->run_delay;
	t->pcount = si.pcount;
	t->run_delay = si.run_delay;
	if (n != 1)
		return 0; /* no wait (pcount moves only after one), or a switch-out missed */
	hist_add(HIST_RUNQ_DELAY, d);
	if (d > RUNQ_THRESHOLD_NS) {
		struct st_event ev;
		/* se.sum_exec_runtime, se.prev_sum_exec_runtime */
		u64 ran[2] = {TASK_U64(task, OFF_TASK_SUM_EXEC), TASK_U64(task, OFF_TASK_PREV_SUM_EXEC)};
		fill_event(&ev, KIND_RUNQ_DELAY, 0, NULL);
		ev.pid = tid; /* the delayed thread */
		bpf_get_current_comm(ev.comm, sizeof(ev.comm));
		ev.value = d;
		ev.value2 = bpf_get_smp_processor_id();
		ev.reason = holder_of(task);
		if (ran[0] > ran[1] && ev.t_ns > ran[0] - ran[1])
			ev.t_ns -= ran[0] - ran[1]; /* when the wait ended: the slice's start */
		submit_event(ctx, &ev);
	}
	return 0;
}
#endif

#ifdef USE_TP_RUNQ_DELAY
int tp_sched_wakeup_new(void *ctx)
{
	return handle_wakeup_new(TP_FIELD(ctx, u32, TPO_sched_wakeup_new_pid));
}

int tp_sched_switch(void *ctx)
{
	return handle_switch_out(ctx);
}
#endif

#ifdef USE_RAW_RUNQ_DELAY
/* raw tracepoints: sched_wakeup_new(struct task_struct *p); sched_switch(bool preempt, ...):
 * the switched-out task is still `current` when sched_switch fires. */
int raw_sched_wakeup_new(struct bpf_raw_tracepoint_args *ctx)
{
	u32 pid = 0;
	bpf_probe_read_kernel(&pid, sizeof(pid), (char *)ctx->args[0] + OFF_TASK_PID);
	return handle_wakeup_new(pid);
}

/* The next task's wait ends now: the current one (being switched out) had the CPU. */
static __always_inline void note_holder(u64 next)
{
	u32 zero = 0;
	struct switch_in *s = switched_in.lookup(&zero);
	if (s) {
		s->next = next;
		s->prev = (u32)bpf_get_current_pid_tgid();
	}
}

int raw_sched_switch(struct bpf_raw_tracepoint_args *ctx)
{
	handle_switch_out(ctx);
	note_holder(ctx->args[2]); /* sched_switch(preempt, prev, next, ...) */
	return 0;
}
#endif
