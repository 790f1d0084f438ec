/*
 * watchdog.h: the run's watchdog, so no script outlives a crashed run.
 *
 * qz_watchdog_arm() forks a detached process (detach.h) that holds the run
 * cgroup's cgroup.kill open and waits on its end of a socketpair. If the
 * orchestrator dies (SIGKILL included) the socket closes and the watchdog
 * writes "1" to cgroup.kill: every script, hook and snapshot command of the
 * run dies with it. qz_watchdog_disarm() tells it the run ended normally.
 */
#ifndef QUIESCE_WATCHDOG_H
#define QUIESCE_WATCHDOG_H

#include <stdint.h>

/* cdef-begin */
/* Returns the watchdog's pid, or -errno; *sock receives the orchestrator's end. */
int qz_watchdog_arm(int kill_fd, int *sock);
/*
 * Tell it the run ended and reap it within wait_ns; one that has not exited
 * by then (stopped, stuck) is SIGKILLed, so the caller never hangs. Returns
 * 0, or -errno (-ETIMEDOUT if even the SIGKILLed watchdog was not reaped).
 */
int qz_watchdog_disarm(int pid, int sock, int64_t wait_ns);
/* cdef-end */

#endif
