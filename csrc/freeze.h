/*
 * freeze.h: FIFREEZE/FITHAW over the filesystems of a session, and the
 * parallel syncfs() pre-flush.
 *
 * The functions take a session whose fds the caller opened, in the order the
 * caller chose. They hold no policy: they return 0 or -errno and record
 * CLOCK_MONOTONIC timestamps and errno per filesystem in the session.
 */
#ifndef QUIESCE_FREEZE_H
#define QUIESCE_FREEZE_H

#include "session.h"

/* cdef-begin */
int qz_preflush(struct qz_session *s);
int qz_freeze(struct qz_session *s);
int qz_thaw(struct qz_session *s);
int qz_cycle(struct qz_session *s);
int qz_thaw_fd(int fd);
/* cdef-end */

/*
 * FITHAW one filesystem its caller has claimed (moved it to QZ_THAWING or
 * QZ_GUARD_THAWING by compare-and-swap), recording the times and errno, then
 * publish `done` (QZ_THAWED or QZ_GUARD_THAWED). The one thaw of a session,
 * for the orchestrator and the guardian alike: only raw system calls, so the
 * guardian may call it after fork.
 */
void qz_thaw_one(struct qz_fs *fs, int32_t done);

/*
 * Stop and join the threads a parallel freeze started (qz_thaw does it once
 * it has thawed; qz_session_free for a session that never thawed).
 */
void qz_pool_stop(struct qz_session *s);

#endif
