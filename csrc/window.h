/*
 * window.h: the whole frozen window as one native call.
 *
 * When the snapshot step is a command, quiesce freezes, starts the command,
 * waits for it (reading its output) to its deadline, and thaws, without
 * returning to Python in between: no GIL, no garbage collector, no import
 * can stretch the window.
 */
#ifndef QUIESCE_WINDOW_H
#define QUIESCE_WINDOW_H

#include "session.h"
#include "spawn.h"

/* cdef-begin */
struct qz_window_res {
    int32_t freeze_rc;        /* 0 or -errno from qz_freeze (the rest did not run) */
    int32_t spawn_rc;         /* 0 or -errno from qz_spawn */
    int32_t wait_rc;          /* 0 or -errno from qz_supervise */
    int32_t thaw_rc;          /* 0 or -errno from qz_thaw */
    struct qz_child child;
    struct qz_wait_res wait;
};

int qz_window_command(struct qz_session *s, const struct qz_spawn_req *req,
                      const struct qz_wait_req *w, int64_t timeout_ns,
                      struct qz_window_res *r);
/* cdef-end */

#endif
