/*
 * watchdog.c: see watchdog.h.
 *
 * Like the guardian, the watchdog runs as quiesce-helper (launch.h): the
 * caller's side starts it, the helper's side is watchdog_main().
 */
#define _GNU_SOURCE
#include "watchdog.h"
#include "detach.h"
#include "launch.h"
#include "session.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static __attribute__((noreturn)) void watchdog_main(int sock, int kill_fd)
{
    struct pollfd pfd = { .fd = sock, .events = POLLIN };
    char msg = QZ_MSG_READY;

    send(sock, &msg, 1, MSG_NOSIGNAL);
    for (;;) {
        int rc = poll(&pfd, 1, -1);
        ssize_t n;

        if (rc < 0 && errno == EINTR)
            continue;
        msg = 0;
        n = recv(sock, &msg, 1, MSG_DONTWAIT);
        if (n == 1 && msg == QZ_MSG_END)
            _exit(0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        break; /* EOF or error: the orchestrator is gone */
    }
    while (pwrite(kill_fd, "1", 1, 0) < 0 && errno == EINTR)
        ;
    _exit(1);
}

/* In quiesce-helper: watch the caller's end of `sock`. */
int qz_watchdog_serve(int sock, int kill_fd)
{
    watchdog_main(sock, kill_fd);
}

int qz_watchdog_arm(int kill_fd, int *sock)
{
    int sv[2], devnull, keep[2], err;
    char sock_arg[16], kill_arg[16];
    char *const argv[] = { "quiesce-watch", "watchdog", sock_arg, kill_arg, NULL };
    pid_t pid;

    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0)
        return -errno;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        err = errno;
        close(devnull);
        return -err;
    }
    keep[0] = sv[1] < kill_fd ? sv[1] : kill_fd;
    keep[1] = sv[1] < kill_fd ? kill_fd : sv[1];
    snprintf(sock_arg, sizeof(sock_arg), "%d", sv[1]);
    snprintf(kill_arg, sizeof(kill_arg), "%d", kill_fd);
    pid = qz_launch_helper(argv, devnull, keep, 2);
    close(devnull);
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        return pid;
    }
    err = qz_wait_ready(sv[0]);
    if (err != 0) {
        kill(pid, SIGKILL);
        qz_watchdog_disarm(pid, sv[0], 1000000000LL);
        return -err;
    }
    *sock = sv[0];
    return pid;
}

/* Reap `pid` by `end` (CLOCK_MONOTONIC ns), looking every millisecond: 0, -ETIMEDOUT or -errno. */
static int reap_by(pid_t pid, int64_t end)
{
    struct timespec ms = { 0, 1000000 };
    int status;
    pid_t rc;

    for (;;) {
        do
            rc = waitpid(pid, &status, WNOHANG);
        while (rc < 0 && errno == EINTR);
        if (rc == pid)
            return 0;
        if (rc < 0)
            return -errno;
        if (qz_now_ns() >= end)
            return -ETIMEDOUT;
        nanosleep(&ms, NULL);
    }
}

int qz_watchdog_disarm(int pid, int sock, int64_t wait_ns)
{
    char msg = QZ_MSG_END;
    int rc;

    if (pid <= 0)
        return -ECHILD;
    send(sock, &msg, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    close(sock);
    rc = reap_by(pid, qz_now_ns() + wait_ns);
    if (rc != -ETIMEDOUT)
        return rc;
    /* Stopped or stuck: the run is over and its cgroup goes anyway; never hang on it. */
    kill(pid, SIGKILL);
    return reap_by(pid, qz_now_ns() + 1000000000LL);
}
