/*
 * detach.h: a helper process forked to outlive its caller's mistakes.
 *
 * The guardian (guardian.c) and the run's watchdog (watchdog.c) are both
 * forked from a process that may have many threads and signal handlers, and
 * both must survive what ends that process: qz_detach() moves the child into
 * its own session, ignores every catchable termination signal, points its
 * stdio at /dev/null and closes every fd but the ones it keeps.
 * qz_wait_ready() is the parent's side of the handshake: the child says
 * QZ_MSG_READY once detached. Nothing here is visible to cffi.
 */
#ifndef QUIESCE_DETACH_H
#define QUIESCE_DETACH_H

#include <stddef.h>

/* One byte over the caller's socketpair. */
#define QZ_MSG_BEGIN 'B'   /* guardian: the first FIFREEZE is about to start */
#define QZ_MSG_END 'E'     /* the caller is done: exit without acting */
#define QZ_MSG_READY 'R'   /* the child is detached and watching */

/*
 * In the child, right after fork: setsid, signal dispositions, stdio on
 * `devnull`, every other fd closed but `keep` (sorted, `nkeep` of them), the
 * process named `name`. Only async-signal-safe calls.
 */
void qz_detach(int devnull, const int *keep, size_t nkeep, const char *name);

/* In the parent: wait up to 5 s for QZ_MSG_READY on `sock`; 0 or an errno. */
int qz_wait_ready(int sock);

#endif
