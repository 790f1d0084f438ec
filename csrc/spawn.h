/*
 * spawn.h: start a script with a pidfd and supervise it to a deadline.
 *
 * qz_spawn() starts a child vfork-style with a pidfd, in its own session,
 * optionally inside a cgroup (joined before exec), with stdin, stdout and stderr given as
 * fds and the script's checked fd at fd 3. qz_supervise() waits on the pidfd
 * and both output pipes at once with ppoll() and a CLOCK_MONOTONIC deadline:
 * no polling interval, exit noticed as soon as the kernel reports it. At the
 * deadline it sends SIGTERM, after the grace period SIGKILL to the whole tree
 * (cgroup.kill, or the process group without a cgroup).
 *
 * Policy stays in Python: which argv, which environment, which cgroup, what
 * the deadline and grace are, what to do with leftovers.
 */
#ifndef QUIESCE_SPAWN_H
#define QUIESCE_SPAWN_H

#include <stdint.h>
#include <stddef.h>

/* cdef-begin */
#define QZ_SCRIPT_FD 3        /* where the checked script's fd is in the child */

/* qz_supervise() outcomes (qz_wait_res.outcome). */
#define QZ_RUNNING 0          /* returned for a progress tick; call again */
#define QZ_EXITED 1           /* reaped; see the status fields */
#define QZ_UNKILLABLE 2       /* SIGKILL sent, still not dead after kill_wait_ns */

struct qz_spawn_req {
    const char *path;         /* execve() this path; NULL: execveat(script_fd) */
    char *const *argv;        /* NULL-terminated */
    char *const *envp;        /* NULL-terminated */
    int script_fd;            /* the checked script, dup'ed to QZ_SCRIPT_FD; -1: none */
    int cgroup_fd;            /* directory fd of a cgroup v2 to start in; -1: none */
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
};

struct qz_child {
    int32_t pid;
    int32_t pidfd;
    int32_t in_cgroup;        /* 1 when the child started inside cgroup_fd */
    int32_t reserved;
    int64_t start_ns;
};

struct qz_wait_req {
    int64_t deadline_ns;      /* absolute CLOCK_MONOTONIC: SIGTERM then */
    int64_t grace_ns;         /* SIGKILL this long after SIGTERM */
    int64_t kill_wait_ns;     /* give up waiting this long after SIGKILL */
    int64_t tick_ns;          /* return QZ_RUNNING every tick (0: never) */
    int cgroup_fd;            /* for cgroup.kill; -1: kill the process group */
    int out_fd;               /* non-blocking read ends; -1: none */
    int err_fd;
    char *out_buf;            /* ring buffers keeping the tail of each stream */
    uint64_t out_cap;
    char *err_buf;
    uint64_t err_cap;
    int interruptible;        /* a signal (EINTR) returns QZ_RUNNING, so the caller's handler runs */
    int release_fd;           /* a non-blocking signal wake-up pipe (a byte per signal); -1: none.
                                 Any other byte ends an interruptible wait (QZ_RUNNING) */
    int release_sig;          /* a byte equal to this number on release_fd ends the wait (released) */
};

struct qz_wait_res {
    int32_t outcome;
    int32_t exited;           /* 1: exit_code valid; 0: killed by term_signal */
    int32_t exit_code;
    int32_t term_signal;
    int32_t timed_out;        /* SIGTERM was sent at the deadline */
    int32_t killed;           /* SIGKILL was sent after the grace */
    int32_t out_open;         /* the pipe had not reached EOF when the child exited */
    int32_t err_open;
    uint64_t out_total;       /* bytes read so far; the tail is in the ring */
    uint64_t err_total;
    int64_t exit_ns;          /* when the exit was noticed */
    int64_t term_ns;
    int64_t kill_ns;
    int64_t utime_us;
    int64_t stime_us;
    int64_t maxrss_kb;
    int32_t released;         /* release_sig arrived: returned with the child still running */
    int32_t reserved;
};

int qz_spawn(const struct qz_spawn_req *req, struct qz_child *out);
int qz_supervise(struct qz_child *c, const struct qz_wait_req *w,
                 struct qz_wait_res *r);
void qz_wait_init(const struct qz_wait_req *w, struct qz_wait_res *r);
int qz_kill_tree(struct qz_child *c, int cgroup_fd);
/* cdef-end */

#endif
