/*
 * session.h: the state one freeze shares between the orchestrator and its
 * guardian.
 *
 * A session lives in an anonymous MAP_SHARED mapping created before the
 * guardian is forked, so both processes see every state change without a
 * message: the frozen window carries no IPC. Each filesystem's state moves
 * only by compare-and-swap, so exactly one process thaws it.
 *
 * Only the region between the cdef markers is given to cffi: it must stay in
 * the subset of C that cffi's parser reads (no includes, no macros with
 * arguments).
 */
#ifndef QUIESCE_SESSION_H
#define QUIESCE_SESSION_H

#include <stdint.h>
#include <stddef.h>

/* cdef-begin */
/* Per-filesystem states. */
#define QZ_IDLE 0           /* not touched yet */
#define QZ_FREEZING 1       /* FIFREEZE under way */
#define QZ_FROZEN 2         /* FIFREEZE returned 0: ours to thaw */
#define QZ_FREEZE_FAILED 3  /* FIFREEZE returned an error: not ours */
#define QZ_THAWING 4        /* the orchestrator is thawing it */
#define QZ_THAWED 5         /* the orchestrator thawed it */
#define QZ_GUARD_THAWING 6  /* the guardian is thawing it */
#define QZ_GUARD_THAWED 7   /* the guardian thawed it */

/* Why the guardian acted (qz_session.guard_claim, then .guard_reason). */
#define QZ_FIRED_NONE 0
#define QZ_FIRED_DEADLINE 1      /* the freeze deadline passed */
#define QZ_FIRED_ORPHANED 2      /* the orchestrator died */
#define QZ_FIRED_BLOCKED 3       /* one FIFREEZE blocked past its own deadline */

#define QZ_LEDGER_NAME_MAX 256

/* The most filesystems one session holds (Python reads it: native.MAX_FILESYSTEMS). */
#define QZ_MAX_FILESYSTEMS 4096

struct qz_fs {
    int32_t fd;
    int32_t state;
    int32_t freeze_errno;
    int32_t thaw_errno;
    int32_t flush_errno;
    int32_t guard_reported;  /* the guardian logged its thaw */
    int32_t group;           /* with parallel: neighbours of one group freeze at once */
    int32_t pad;
    int64_t flush_start_ns;
    int64_t flush_end_ns;
    int64_t freeze_start_ns;
    int64_t freeze_end_ns;
    int64_t thaw_start_ns;
    int64_t thaw_end_ns;
};

struct qz_session {
    uint32_t n;
    int32_t failed_index;      /* the FIFREEZE that failed, or -1 */
    int32_t freeze_done;       /* set once the freeze loop has ended */
    int32_t parallel;          /* freeze each group's filesystems concurrently */
    int32_t guard_claim;       /* QZ_FIRED_*, set once when the guardian starts to act */
    int32_t guard_reason;      /* the same, set once it has thawed and restored */
    int64_t guard_fired_ns;
    int64_t timeout_ns;        /* window limit from the first FIFREEZE; 0 = none */
    int64_t deadline_ns;       /* absolute CLOCK_MONOTONIC, set when freezing begins */
    int64_t step_timeout_ns;   /* per-FIFREEZE limit; 0 = none */
    int32_t guardian_pid;
    int32_t guardian_pidfd;
    int32_t guardian_sock;
    int32_t guardian_status;   /* wait status once reaped, else -1 */
    int32_t report_fd;
    int32_t keep_fd;
    int32_t proof_fd;          /* kept open: proves the guardian is this freeze's */
    int32_t ledger_dirfd;      /* the run directory; the ledger is a name in it */
    int32_t restore_fd;        /* written with restore_value if orphaned; -1: none */
    int32_t restore_len;
    int32_t mem_fd;            /* the memfd this mapping is of: the guardian maps it too */
    int32_t pad2;
    char restore_value[16];
    char ledger_name[256];
    void *pool;                /* this process's threads of a parallel session (freeze.c) */
    struct qz_fs fs[];
};

int64_t qz_now_ns(void);
/*
 * Run without pidfds, as on a kernel before 5.3: children and the guardian
 * are then watched by pid (WNOHANG checks a millisecond apart). For the
 * tests of that path on kernels that have pidfds.
 */
void qz_set_no_pidfd(int on);
int qz_no_pidfd(void);
struct qz_session *qz_session_new(const int *fds, uint32_t n);
void qz_session_free(struct qz_session *s);
int32_t qz_fs_state(struct qz_session *s, uint32_t i);
/* cdef-end */

/* The size of the mapping of a session of `n` filesystems. */
size_t qz_session_size(uint32_t n);

struct pollfd;

/*
 * Wait until one of `n` (at most 7) fds is ready or CLOCK_MONOTONIC reaches
 * `deadline_ns` (-1: no deadline). The deadline is an absolute timerfd:
 * poll's own timeout may expire late by 0.1% of itself (60 ms on a 60 s
 * deadline), a timerfd does not. Returns 0 when the deadline passed, > 0
 * when an fd is ready, -errno on failure. `timer_fd` is the caller's
 * timerfd; -1 falls back to poll's timeout.
 */
int qz_wait_until(struct pollfd *pfd, unsigned int n, int timer_fd,
                  int64_t deadline_ns);

/* Atomic accessors shared by freeze.c and guardian.c. */
static inline int32_t qz_load(const int32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void qz_store(int32_t *p, int32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

static inline int qz_cas(int32_t *p, int32_t expected, int32_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

#endif
