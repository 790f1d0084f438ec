/*
 * guardian.c: see guardian.h.
 *
 * The guardian runs as quiesce-helper (launch.h), a program of its own that
 * maps the caller's session from its memfd: the caller's memory is never
 * copied. Its loop uses only system calls and stack memory: no malloc, no
 * stdio, no locale.
 */
#define _GNU_SOURCE
#include "guardian.h"
#include "detach.h"
#include "freeze.h"
#include "launch.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>


/* ---- a tiny async-signal-safe line writer ------------------------------ */

struct line {
    char buf[256];
    size_t len;
};

static void put_str(struct line *l, const char *s)
{
    while (*s != '\0' && l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = *s++;
}

static void put_int(struct line *l, int64_t v)
{
    char tmp[24];
    size_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

    if (v < 0)
        put_str(l, "-");
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    while (n > 0 && l->len < sizeof(l->buf) - 1)
        l->buf[l->len++] = tmp[--n];
}

static void emit(const struct qz_session *s, struct line *l)
{
    ssize_t rc;

    if (s->report_fd < 0)
        return;
    put_str(l, "\n");
    do
        rc = write(s->report_fd, l->buf, l->len);
    while (rc < 0 && errno == EINTR);
}

static void start_line(struct line *l, const char *event)
{
    l->len = 0;
    put_str(l, "quiesce-guardian pid=");
    put_int(l, getpid());
    put_str(l, " event=");
    put_str(l, event);
}

static const char *reason_name(int32_t reason)
{
    switch (reason) {
    case QZ_FIRED_DEADLINE:
        return "deadline";
    case QZ_FIRED_ORPHANED:
        return "orphaned";
    case QZ_FIRED_BLOCKED:
        return "blocked-freeze";
    default:
        return "none";
    }
}

/* ---- thawing ------------------------------------------------------------ */

/*
 * Log what was thawed since the last call. Only after thawing: the report fd
 * may be a file on one of the filesystems that were frozen.
 */
static void log_thaws(struct qz_session *s)
{
    struct line l;
    uint32_t i;

    for (i = s->n; i-- > 0;) {
        struct qz_fs *fs = &s->fs[i];

        if (qz_load(&fs->state) != QZ_GUARD_THAWED || fs->guard_reported)
            continue;
        fs->guard_reported = 1;
        start_line(&l, "thaw");
        put_str(&l, " index=");
        put_int(&l, i);
        put_str(&l, " errno=");
        put_int(&l, fs->thaw_errno);
        put_str(&l, " start_ns=");
        put_int(&l, fs->thaw_start_ns);
        put_str(&l, " end_ns=");
        put_int(&l, fs->thaw_end_ns);
        emit(s, &l);
    }
}

/*
 * Thaw, last first, what is frozen. A FIFREEZE still under way is left alone
 * while the orchestrator lives (it thaws it itself when the call returns); an
 * orphaned guardian thaws it too, since its caller can no longer.
 */
static void thaw_held(struct qz_session *s, int orphaned)
{
    uint32_t i;

    for (i = s->n; i-- > 0;) {
        int32_t *st = &s->fs[i].state;

        if (qz_cas(st, QZ_FROZEN, QZ_GUARD_THAWING) ||
            (orphaned && qz_cas(st, QZ_FREEZING, QZ_GUARD_THAWING)))
            qz_thaw_one(&s->fs[i], QZ_GUARD_THAWED);
    }
}

/*
 * Undo a system setting the orchestrator changed for the window (idempotent:
 * the value written is the one found before). Done whenever the guardian
 * ends a window, so a live but stuck orchestrator cannot leave it changed.
 */
static void restore_setting(struct qz_session *s)
{
    ssize_t rc;

    if (s->restore_fd < 0 || s->restore_len <= 0)
        return;
    do
        rc = pwrite(s->restore_fd, s->restore_value, (size_t)s->restore_len, 0);
    while (rc < 0 && errno == EINTR);
}

/*
 * Act once: claim the session (the freeze loop stops at the claim), thaw,
 * restore, log, and only then publish the reason. Whoever reads a reason
 * (Python's `guardian_fired`) may rely on everything firing does being done.
 */
static void fire(struct qz_session *s, int32_t reason)
{
    struct line l;
    int32_t none = QZ_FIRED_NONE;

    if (!__atomic_compare_exchange_n(&s->guard_claim, &none, reason, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return;
    s->guard_fired_ns = qz_now_ns();
    thaw_held(s, reason == QZ_FIRED_ORPHANED);
    restore_setting(s);
    start_line(&l, "fired");
    put_str(&l, " reason=");
    put_str(&l, reason_name(reason));
    put_str(&l, " t_ns=");
    put_int(&l, s->guard_fired_ns);
    emit(s, &l);
    log_thaws(s);
    qz_store(&s->guard_reason, reason);
}

/* The orchestrator is gone: thaw everything, and drop its ledger if clean. */
static void orphaned(struct qz_session *s)
{
    uint32_t i;
    int clean = 1;

    fire(s, QZ_FIRED_ORPHANED);
    /* Fired earlier for another reason: the FIFREEZE it left may be done. */
    thaw_held(s, 1);
    log_thaws(s);
    for (i = 0; i < s->n; i++) {
        int32_t e = s->fs[i].thaw_errno;

        if (qz_load(&s->fs[i].state) == QZ_GUARD_THAWED && e != 0 &&
            e != EINVAL)
            clean = 0;
    }
    /* By name in the run directory's fd: no path is resolved again. */
    if (clean && s->ledger_dirfd >= 0 && s->ledger_name[0] != '\0')
        unlinkat(s->ledger_dirfd, s->ledger_name, 0);
}

/* ---- the watch loop ----------------------------------------------------- */

static int holds_any(struct qz_session *s)
{
    uint32_t i;

    for (i = 0; i < s->n; i++) {
        int32_t st = qz_load(&s->fs[i].state);

        if (st == QZ_FREEZING || st == QZ_FROZEN)
            return 1;
    }
    return 0;
}

static int freezing_index(struct qz_session *s)
{
    uint32_t i;

    for (i = 0; i < s->n; i++)
        if (qz_load(&s->fs[i].state) == QZ_FREEZING)
            return (int)i;
    return -1;
}

/*
 * When the guardian must next look, as an absolute time (-1: only a message
 * or the orchestrator's death can matter). While the freeze loop runs it
 * wakes at the current FIFREEZE's own deadline; after that, at the window's.
 * Once the freeze loop is over and nothing is frozen (thawed early, or a
 * failed freeze rolled back), a deadline already past has nothing left to
 * guard: waking for it again would only spin until the window is closed.
 */
static int64_t next_wake(struct qz_session *s, int64_t anchor, int64_t now)
{
    int64_t wake = s->deadline_ns > 0 ? s->deadline_ns : -1;

    if (wake >= 0 && wake <= now && qz_load(&s->freeze_done) && !holds_any(s))
        wake = -1;

    if (!qz_load(&s->freeze_done) && s->step_timeout_ns > 0) {
        int j = freezing_index(s);
        int64_t start = anchor;
        int64_t step;

        if (j >= 0 && s->fs[j].freeze_start_ns > start)
            start = s->fs[j].freeze_start_ns;
        step = start + s->step_timeout_ns;
        if (wake < 0 || step < wake)
            wake = step;
    }
    return wake;
}

static void check_deadlines(struct qz_session *s, int64_t now)
{
    int j;

    if (s->deadline_ns > 0 && now >= s->deadline_ns && holds_any(s)) {
        fire(s, QZ_FIRED_DEADLINE);
        return;
    }
    if (qz_load(&s->freeze_done) || s->step_timeout_ns <= 0)
        return;
    j = freezing_index(s);
    if (j >= 0 && now >= s->fs[j].freeze_start_ns + s->step_timeout_ns)
        fire(s, QZ_FIRED_BLOCKED);
}

static void to_timespec(int64_t ns, struct timespec *ts)
{
    if (ns < 0)
        ns = 0;
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

static __attribute__((noreturn)) void guardian_main(struct qz_session *s,
                                                    int sock)
{
    struct pollfd pfd = { .fd = sock, .events = POLLIN };
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    int64_t anchor = 0;
    int begun = 0;

    for (;;) {
        int64_t now = qz_now_ns();
        int64_t wake = -1;
        int rc;

        if (begun && qz_load(&s->guard_claim) == QZ_FIRED_NONE) {
            check_deadlines(s, now);
            if (qz_load(&s->guard_claim) == QZ_FIRED_NONE)
                wake = next_wake(s, anchor, now);
        }
        pfd.revents = 0;
        rc = qz_wait_until(&pfd, 1, timer, wake);
        if (rc == -EINTR || rc == 0)
            continue;
        if (rc < 0) {
            /* Cannot wait: never leave a freeze unguarded. Look again soon. */
            struct timespec pause = { 0, 1000000 };

            nanosleep(&pause, NULL);
            continue;
        }
        if (pfd.revents & POLLIN) {
            char msg = 0;
            ssize_t n = recv(sock, &msg, 1, MSG_DONTWAIT);

            if (n == 1 && msg == QZ_MSG_BEGIN) {
                begun = 1;
                anchor = qz_now_ns();
                continue;
            }
            if (n == 1 && msg == QZ_MSG_END)
                break;
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
        }
        /* EOF, hang-up or error: the orchestrator is gone. */
        orphaned(s);
        break;
    }
    _exit(qz_load(&s->guard_claim) == QZ_FIRED_NONE ? 0 : 1);
}

/* ---- the helper's side -------------------------------------------------- */

/*
 * In quiesce-helper: map the caller's session from its memfd and guard it.
 * Returns only if the memfd is not a session (the caller then sees no READY).
 */
int qz_guardian_serve(int mem_fd, int sock)
{
    struct qz_session *s;
    struct stat st;
    char ready = QZ_MSG_READY;

    if (fstat(mem_fd, &st) != 0 || (size_t)st.st_size < sizeof(*s))
        return -EINVAL;
    s = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, mem_fd, 0);
    if (s == MAP_FAILED)
        return -errno;
    if (s->n == 0 || s->n > QZ_MAX_FILESYSTEMS || qz_session_size(s->n) != (size_t)st.st_size)
        return -EINVAL;
    close(mem_fd);
    send(sock, &ready, 1, MSG_NOSIGNAL);
    guardian_main(s, sock);
}

/* ---- the orchestrator's side ------------------------------------------- */

int qz_guardian_arm(struct qz_session *s, int64_t timeout_ns,
                    int64_t step_timeout_ns, int report_fd, int keep_fd,
                    int proof_fd, int ledger_dirfd, const char *ledger_name)
{
    int sv[2], devnull, *keep;
    size_t nkeep = 0, i;
    char mem_arg[16], sock_arg[16];
    char *const argv[] = { "quiesce-guard", "guardian", mem_arg, sock_arg, NULL };
    pid_t pid;
    int err;

    if (s->guardian_pid > 0)
        return -EALREADY;
    if (ledger_name != NULL &&
        (strlen(ledger_name) >= sizeof(s->ledger_name) || strchr(ledger_name, '/') != NULL))
        return -EINVAL;
    s->timeout_ns = timeout_ns;
    s->step_timeout_ns = step_timeout_ns;
    s->report_fd = report_fd;
    s->keep_fd = keep_fd;
    s->proof_fd = proof_fd;
    s->ledger_dirfd = ledger_name != NULL ? ledger_dirfd : -1;
    s->ledger_name[0] = '\0';
    if (ledger_name != NULL)
        strcpy(s->ledger_name, ledger_name);

    keep = malloc((s->n + 7) * sizeof(*keep));
    if (keep == NULL)
        return -ENOMEM;
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) {
        err = errno;
        free(keep);
        return -err;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        err = errno;
        close(devnull);
        free(keep);
        return -err;
    }
    /* The fds the guardian keeps (under their numbers): the rest are closed. */
    keep[nkeep++] = sv[1];
    keep[nkeep++] = s->mem_fd;
    if (report_fd >= 0)
        keep[nkeep++] = report_fd;
    if (keep_fd >= 0)
        keep[nkeep++] = keep_fd;
    if (proof_fd >= 0)
        keep[nkeep++] = proof_fd;
    if (s->ledger_dirfd >= 0)
        keep[nkeep++] = s->ledger_dirfd;
    if (s->restore_fd >= 0)
        keep[nkeep++] = s->restore_fd;
    for (i = 0; i < s->n; i++)
        keep[nkeep++] = s->fs[i].fd;
    snprintf(mem_arg, sizeof(mem_arg), "%d", (int)s->mem_fd);
    snprintf(sock_arg, sizeof(sock_arg), "%d", sv[1]);
    /*
     * Signals stay blocked from the start until the guardian has ignored
     * them (qz_launch_helper): a Ctrl-C or SIGTERM to the caller's group
     * right then cannot kill it.
     */
    pid = qz_launch_helper(argv, devnull, keep, nkeep);
    free(keep);
    close(devnull);
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        return pid;
    }
    s->guardian_pid = pid;
    s->guardian_sock = sv[0];
#ifdef SYS_pidfd_open
    if (!qz_no_pidfd())
        s->guardian_pidfd = (int32_t)syscall(SYS_pidfd_open, pid, 0);
#endif
    /* Armed means detached, signals ignored, watching: wait for it to say so. */
    err = qz_wait_ready(sv[0]);
    if (err != 0) {
        kill(pid, SIGKILL);
        qz_guardian_disarm(s, 1000000000LL);
        return -err;
    }
    return 0;
}

/*
 * Before arming: whenever the guardian ends the window (the orchestrator
 * died, a deadline passed), it writes `value` to `fd` (at offset 0) after
 * thawing. The caller uses it to undo a system setting it changed for the
 * window.
 */
int qz_guardian_restore_on_orphan(struct qz_session *s, int fd,
                                  const char *value, uint32_t len)
{
    if (s->guardian_pid > 0)
        return -EALREADY;
    if (len > sizeof(s->restore_value))
        return -EINVAL;
    memcpy(s->restore_value, value, len);
    s->restore_len = (int32_t)len;
    s->restore_fd = fd;
    return 0;
}

void qz_guardian_begin(struct qz_session *s)
{
    char msg = QZ_MSG_BEGIN;

    s->deadline_ns = s->timeout_ns > 0 ? qz_now_ns() + s->timeout_ns : 0;
    /*
     * For `quiesce status` (QZ_PROOF_DEADLINE_AT): when the guardian thaws
     * at the latest. Written before the first FIFREEZE, so a proof without
     * it means that nothing is frozen yet; a memfd, no filesystem.
     */
    if (s->proof_fd >= 0 && s->deadline_ns > 0)
        (void)!pwrite(s->proof_fd, &s->deadline_ns, sizeof s->deadline_ns,
                      QZ_PROOF_DEADLINE_AT);
    if (s->guardian_sock >= 0)
        send(s->guardian_sock, &msg, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/*
 * Reap the guardian by `end` (CLOCK_MONOTONIC ns). Every path is bounded:
 * a guardian that does not exit (stopped, stuck) must never hang the caller,
 * so a failing ppoll or a missing pidfd falls back to WNOHANG checks a
 * millisecond apart, not to a blocking waitpid. Returns 0 or -errno
 * (-ETIMEDOUT when it is still running at `end`).
 */
static int reap_guardian(pid_t pid, int pidfd, int64_t end, int *status)
{
    struct pollfd pfd = { .fd = pidfd, .events = POLLIN };
    struct timespec ts, ms = { 0, 1000000 };
    int use_pidfd = pidfd >= 0;
    pid_t rc;

    for (;;) {
        do
            rc = waitpid(pid, status, WNOHANG);
        while (rc < 0 && errno == EINTR);
        if (rc == pid)
            return 0;
        if (rc < 0)
            return -errno;
        if (qz_now_ns() >= end)
            return -ETIMEDOUT;
        if (use_pidfd) {
            to_timespec(end - qz_now_ns(), &ts);
            if (ppoll(&pfd, 1, &ts, NULL) < 0 && errno != EINTR)
                use_pidfd = 0; /* poll unusable: check every millisecond */
        } else {
            nanosleep(&ms, NULL);
        }
    }
}

/*
 * Tell the guardian the window is over and reap it. Returns 0, or -ETIMEDOUT
 * when it has not exited within wait_ns (it is then left running: it still
 * holds the fds and will thaw if anything is frozen).
 */
int qz_guardian_disarm(struct qz_session *s, int64_t wait_ns)
{
    char msg = QZ_MSG_END;
    int status, rc;
    pid_t pid = s->guardian_pid;

    if (pid <= 0)
        return -ECHILD;
    send(s->guardian_sock, &msg, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    rc = reap_guardian(pid, s->guardian_pidfd, qz_now_ns() + wait_ns, &status);
    if (rc < 0)
        return rc;
    s->guardian_status = status;
    s->guardian_pid = -1;
    close(s->guardian_sock);
    s->guardian_sock = -1;
    if (s->guardian_pidfd >= 0)
        close(s->guardian_pidfd);
    s->guardian_pidfd = -1;
    return 0;
}
