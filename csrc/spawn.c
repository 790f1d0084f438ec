/*
 * spawn.c: see spawn.h.
 *
 * The child side of qz_spawn() runs between clone and exec on the parent's
 * memory (CLONE_VM, like vfork): it makes raw system calls only and touches
 * nothing but its own stack. Exec
 * failures travel back to the parent as an errno over a close-on-exec pipe,
 * so qz_spawn() returns -errno instead of a child that exits 127.
 */
#define _GNU_SOURCE
#include "spawn.h"
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

/* ---- the child -------------------------------------------------------- */

static __attribute__((noreturn)) void child_fail(int errpipe, int err)
{
    ssize_t rc;

    do
        rc = write(errpipe, &err, sizeof(err));
    while (rc < 0 && errno == EINTR);
    _exit(127);
}

/*
 * Move fd `from` to `to` without close-on-exec. Targets below 4 may be
 * occupied by another source fd; the caller moved all sources above 3 first.
 */
static int place_fd(int from, int to)
{
    if (from == to)
        return fcntl(to, F_SETFD, 0);
    return dup2(from, to) < 0 ? -1 : 0;
}

static int lift(int fd, int floor)
{
    return fd < 0 || fd >= floor ? fd : fcntl(fd, F_DUPFD_CLOEXEC, floor);
}

static __attribute__((noreturn)) void child_main(const struct qz_spawn_req *req,
                                                 int errpipe, int join_cgroup)
{
    struct sigaction dfl;
    sigset_t none;
    int in, out, err, script, sig, lifted;

    if (setsid() < 0)
        child_fail(errpipe, errno);
    /*
     * A fixed place and file mode creation mask, whoever started quiesce and
     * from where: a relative path in a script must never land in a directory
     * another user controls, and what it creates is not writable by others.
     * (No CLONE_FS: the caller keeps its own.)
     */
    if (chdir("/") != 0)
        child_fail(errpipe, errno);
    umask(022);
    /* Python ignores SIGPIPE and may block signals: a script gets defaults. */
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (join_cgroup) {
        int procs = openat(req->cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);

        if (procs < 0 || write(procs, "0", 1) != 1)
            child_fail(errpipe, errno);
        close(procs);
    }

    /* Keep every source clear of 0..3 before placing them there. */
    /*
     * The error pipe is lifted into a new variable: if that fails, the
     * original fd is still the one way to tell the parent why. Overwriting
     * it with -1 would make the parent read EOF and report a start that
     * never happened.
     */
    lifted = lift(errpipe, 4);
    if (lifted < 0)
        child_fail(errpipe, errno);
    errpipe = lifted;
    in = lift(req->stdin_fd, 4);
    out = lift(req->stdout_fd, 4);
    err = lift(req->stderr_fd, 4);
    script = lift(req->script_fd, 4);
    if (in < 0 || out < 0 || err < 0 || (req->script_fd >= 0 && script < 0))
        child_fail(errpipe, errno);
    if (place_fd(in, 0) || place_fd(out, 1) || place_fd(err, 2) ||
        (script >= 0 && place_fd(script, QZ_SCRIPT_FD)))
        child_fail(errpipe, errno);
    /* Nothing else of the caller's leaks into the script. */
    {
        unsigned int first = script >= 0 ? QZ_SCRIPT_FD + 1 : QZ_SCRIPT_FD;
        int keep = errpipe;

        if ((unsigned int)keep > first)
            syscall(SYS_close_range, first, (unsigned int)keep - 1, 0);
        syscall(SYS_close_range, (unsigned int)keep + 1, ~0U, 0);
    }

    if (req->path != NULL)
        execve(req->path, req->argv, req->envp);
    else
        syscall(SYS_execveat, QZ_SCRIPT_FD, "", req->argv, req->envp,
                AT_EMPTY_PATH);
    child_fail(errpipe, errno);
}

/* ---- the parent ------------------------------------------------------- */

struct child_args {
    const struct qz_spawn_req *req;
    int errpipe;
    int join;
};

static int child_entry(void *arg)
{
    struct child_args *a = arg;

    child_main(a->req, a->errpipe, a->join);
}

#define CHILD_STACK (256 * 1024)

/*
 * Start the child the way posix_spawn does: CLONE_VM | CLONE_VFORK, on its
 * own small stack. Nothing of the parent's memory is copied, so the start
 * costs the same for a 30 MB process as for a 3 GB one (a fork-style start
 * grew from 2 to 13 ms with 256 MB more resident). The parent thread waits
 * until the child has exec'd or failed. Signals are blocked across the clone
 * so no handler of the caller's runs in the child on shared memory; the
 * child resets every disposition before unblocking them.
 */
static pid_t start_child(const struct qz_spawn_req *req, int errpipe, int *pidfd)
{
    struct child_args args = { req, errpipe, req->cgroup_fd >= 0 };
    sigset_t all, old;
    char *stack;
    pid_t pid;
    int err;

    stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return -1;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    *pidfd = -1;
    if (qz_no_pidfd()) {
        pid = clone(child_entry, stack + CHILD_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    } else {
        pid = clone(child_entry, stack + CHILD_STACK,
                    CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &args, pidfd);
        if (pid < 0 && errno == EINVAL) {
            /* Kernels before 5.2 have no CLONE_PIDFD: ask for one afterwards. */
            pid = clone(child_entry, stack + CHILD_STACK,
                        CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
            if (pid > 0)
                *pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        }
    }
    err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, CHILD_STACK);
    errno = err;
    return pid;
}

static int read_exec_error(int fd)
{
    int err = 0;
    ssize_t n;

    do
        n = read(fd, &err, sizeof(err));
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof(err) ? err : 0;
}

int qz_spawn(const struct qz_spawn_req *req, struct qz_child *out)
{
    int errpipe[2], pidfd = -1, err, status;
    pid_t pid;

    memset(out, 0, sizeof(*out));
    out->pid = -1;
    out->pidfd = -1;
    if (pipe2(errpipe, O_CLOEXEC) != 0)
        return -errno;

    out->start_ns = qz_now_ns();
    pid = start_child(req, errpipe[1], &pidfd);
    err = errno;
    close(errpipe[1]);
    if (pid < 0) {
        close(errpipe[0]);
        return -err;
    }
    err = read_exec_error(errpipe[0]);
    close(errpipe[0]);
    if (err != 0) {
        /* The child never ran the program: reap it and report why. */
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        if (pidfd >= 0)
            close(pidfd);
        return -err;
    }
    out->pid = pid;
    out->pidfd = pidfd;
    out->in_cgroup = req->cgroup_fd >= 0;
    return 0;
}

/* ---- supervision ------------------------------------------------------ */

/* Read what is available now; keep the last `cap` bytes in a ring. */
static int drain(int fd, char *ring, uint64_t cap, uint64_t *total)
{
    char buf[65536];

    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));

        if (n == 0)
            return 0; /* EOF */
        if (n < 0)
            return (errno == EAGAIN || errno == EINTR) ? 1 : 0;
        if (cap > 0) {
            /* Only the last `cap` bytes of this read can survive. */
            uint64_t len = (uint64_t)n, skip = len > cap ? len - cap : 0;
            uint64_t pos = (*total + skip) % cap, left = len - skip;
            uint64_t first = left < cap - pos ? left : cap - pos;

            memcpy(ring + pos, buf + skip, first);
            memcpy(ring, buf + skip + first, left - first);
        }
        *total += (uint64_t)n;
    }
}

static int send_pidfd_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* SIGKILL every process of the script: its cgroup, else its process group. */
int qz_kill_tree(struct qz_child *c, int cgroup_fd)
{
    int rc = 0;

    if (cgroup_fd >= 0) {
        int fd = openat(cgroup_fd, "cgroup.kill", O_WRONLY | O_CLOEXEC);

        if (fd >= 0) {
            if (write(fd, "1", 1) != 1)
                rc = -errno;
            close(fd);
            if (rc == 0)
                return 0;
        }
    }
    /* No cgroup.kill: the process group (the script is a session leader). */
    if (c->pid > 0 && kill(-c->pid, SIGKILL) != 0 && errno != ESRCH)
        rc = -errno;
    if (c->pidfd >= 0)
        send_pidfd_signal(c->pidfd, SIGKILL);
    return rc;
}

static void terminate(struct qz_child *c)
{
    /*
     * The group first: a shell script's children get SIGTERM too. Never
     * with a pid of 0 or -1: kill(0) is the caller's own process group and
     * kill(-(-1)) is init.
     */
    if (c->pid > 0)
        kill(-c->pid, SIGTERM);
    if (c->pidfd >= 0)
        send_pidfd_signal(c->pidfd, SIGTERM);
    else if (c->pid > 0)
        kill(c->pid, SIGTERM);
}

static int reap(struct qz_child *c, struct qz_wait_res *r)
{
    siginfo_t info;
    struct rusage ru;
    int rc;

    memset(&info, 0, sizeof(info));
    memset(&ru, 0, sizeof(ru));
    do
        rc = (int)syscall(SYS_waitid, c->pidfd >= 0 ? P_PIDFD : P_PID,
                          c->pidfd >= 0 ? c->pidfd : c->pid, &info,
                          WEXITED | WNOHANG, &ru);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return -errno;
    if (info.si_pid == 0)
        return 0; /* not yet */
    r->exit_ns = qz_now_ns();
    r->exited = info.si_code == CLD_EXITED;
    r->exit_code = r->exited ? info.si_status : -1;
    r->term_signal = r->exited ? 0 : info.si_status;
    r->utime_us = (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec;
    r->stime_us = (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    r->maxrss_kb = ru.ru_maxrss;
    return 1;
}

void qz_wait_init(const struct qz_wait_req *w, struct qz_wait_res *r)
{
    memset(r, 0, sizeof(*r));
    r->out_open = w->out_fd >= 0;
    r->err_open = w->err_fd >= 0;
}

/*
 * Read the wake-up pipe empty: 2 if one of its bytes is the release signal's
 * number, 1 if it held only other signals' bytes, 0 if it was empty.
 */
static int released(const struct qz_wait_req *w)
{
    unsigned char buf[64];
    int hit = 0;

    for (;;) {
        ssize_t i, n = read(w->release_fd, buf, sizeof(buf));

        if (n <= 0)
            return hit; /* empty (EAGAIN), EOF or error: stop reading */
        for (i = 0; i < n; i++)
            if (w->release_sig > 0 && buf[i] == (unsigned char)w->release_sig)
                hit = 2;
            else if (hit == 0)
                hit = 1;
    }
}

static int64_t min_pos(int64_t a, int64_t b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

static int supervise_loop(struct qz_child *c, const struct qz_wait_req *w,
                          struct qz_wait_res *r, int64_t tick_end, int timer)
{
    for (;;) {
        struct pollfd pfd[4];
        nfds_t n = 0, rel = 0;
        int64_t now = qz_now_ns(), wake;
        int rc, got;

        got = reap(c, r);
        if (got < 0)
            return got;
        if (got > 0) {
            if (w->out_fd >= 0 && r->out_open)
                r->out_open = drain(w->out_fd, w->out_buf, w->out_cap, &r->out_total);
            if (w->err_fd >= 0 && r->err_open)
                r->err_open = drain(w->err_fd, w->err_buf, w->err_cap, &r->err_total);
            r->outcome = QZ_EXITED;
            return 0;
        }
        if (!r->timed_out && w->deadline_ns > 0 && now >= w->deadline_ns) {
            r->timed_out = 1;
            r->term_ns = now;
            terminate(c);
        }
        if (r->timed_out && !r->killed && now >= r->term_ns + w->grace_ns) {
            r->killed = 1;
            r->kill_ns = now;
            qz_kill_tree(c, w->cgroup_fd);
        }
        if (r->killed && w->kill_wait_ns > 0 && now >= r->kill_ns + w->kill_wait_ns) {
            r->outcome = QZ_UNKILLABLE;
            return 0;
        }
        if (tick_end > 0 && now >= tick_end)
            return 0; /* QZ_RUNNING: a progress tick */

        wake = tick_end;
        if (!r->timed_out && w->deadline_ns > 0)
            wake = min_pos(wake, w->deadline_ns);
        else if (r->timed_out && !r->killed)
            wake = min_pos(wake, r->term_ns + w->grace_ns);
        else if (r->killed && w->kill_wait_ns > 0)
            wake = min_pos(wake, r->kill_ns + w->kill_wait_ns);

        pfd[n].fd = c->pidfd;
        pfd[n++].events = POLLIN;
        if (w->out_fd >= 0 && r->out_open) {
            pfd[n].fd = w->out_fd;
            pfd[n++].events = POLLIN;
        }
        if (w->err_fd >= 0 && r->err_open) {
            pfd[n].fd = w->err_fd;
            pfd[n++].events = POLLIN;
        }
        if (w->release_fd >= 0) {
            rel = n;
            pfd[n].fd = w->release_fd;
            pfd[n++].events = POLLIN;
        }
        if (c->pidfd < 0)
            wake = min_pos(wake, now + 1000000); /* no pidfd (old kernel): look every ms */
        rc = qz_wait_until(pfd, (unsigned int)n, timer, wake);
        if (rc > 0 && w->release_fd >= 0 && pfd[rel].revents) {
            int got_sig = released(w);

            if (got_sig == 2) {
                r->released = 1;
                return 0; /* QZ_RUNNING, released: the caller ends the wait early */
            }
            /*
             * Another signal's byte. Its handler may have run on another
             * thread, or between two waits where no EINTR could report it
             * (waitid retries EINTR): the byte is what tells this wait.
             */
            if (got_sig == 1 && w->interruptible)
                return 0; /* QZ_RUNNING: let the caller's signal handler run */
        }
        if (rc == -EINTR && w->interruptible)
            return 0; /* QZ_RUNNING: let the caller's signal handler run */
        if (rc < 0 && rc != -EINTR)
            return rc;
        if (w->out_fd >= 0 && r->out_open)
            r->out_open = drain(w->out_fd, w->out_buf, w->out_cap, &r->out_total);
        if (w->err_fd >= 0 && r->err_open)
            r->err_open = drain(w->err_fd, w->err_buf, w->err_cap, &r->err_total);
    }
}

/*
 * Wait for the child's exit, reading its output as it comes. Returns 0 with
 * r->outcome set, or -errno. Once the child has exited its pipes are drained
 * of what is already there and left: a descendant that keeps them open does
 * not hold up the run.
 */
int qz_supervise(struct qz_child *c, const struct qz_wait_req *w,
                 struct qz_wait_res *r)
{
    int64_t tick_end = w->tick_ns > 0 ? qz_now_ns() + w->tick_ns : -1;
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    int out;

    r->outcome = QZ_RUNNING;
    out = supervise_loop(c, w, r, tick_end, timer);
    if (timer >= 0)
        close(timer);
    return out;
}
