/*
 * guardian.h: the process that guarantees a thaw.
 *
 * qz_guardian_arm() forks a guardian before the first FIFREEZE. It shares the
 * session mapping and inherits the target fds, so it can thaw without the
 * orchestrator's help. It thaws what the orchestrator froze when
 *   - the window deadline passes (timeout_ns after the first FIFREEZE),
 *   - one FIFREEZE stays blocked longer than step_timeout_ns,
 *   - the orchestrator dies (its end of a socketpair closes: SIGKILL too).
 * It runs in its own session with every catchable termination signal
 * ignored, and after fork it makes only async-signal-safe calls.
 */
#ifndef QUIESCE_GUARDIAN_H
#define QUIESCE_GUARDIAN_H

#include "session.h"

/* cdef-begin */
/*
 * Where qz_freeze() writes the window's deadline (int64_t, CLOCK_MONOTONIC
 * ns) in the proof memfd just before the first FIFREEZE: `quiesce status`
 * reads there when the guardian thaws at the latest, and that freezing has
 * begun (the first bytes are the holder's state, see quiesce.engine.proof).
 */
#define QZ_PROOF_DEADLINE_AT 8
int qz_guardian_arm(struct qz_session *s, int64_t timeout_ns,
                    int64_t step_timeout_ns, int report_fd, int keep_fd,
                    int proof_fd, int ledger_dirfd, const char *ledger_name);
int qz_guardian_disarm(struct qz_session *s, int64_t wait_ns);
int qz_guardian_restore_on_orphan(struct qz_session *s, int fd,
                                  const char *value, uint32_t len);
/* cdef-end */

/* Called by qz_freeze() just before the first FIFREEZE. */
void qz_guardian_begin(struct qz_session *s);

#endif
