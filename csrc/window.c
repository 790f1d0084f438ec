/* window.c: see window.h. */
#define _GNU_SOURCE
#include "window.h"
#include "freeze.h"

#include <string.h>

/*
 * Freeze; start the command; supervise it to `timeout_ns` after its start
 * (w->deadline_ns is ignored); thaw. The thaw happens whatever the command
 * did. A command that cannot be killed (it sleeps in the kernel, e.g. on a
 * frozen filesystem) is left to the caller after the thaw lets it die. A
 * release (w->release_fd, w->release_sig: `quiesce thaw`) ends the window at
 * once: thawed with the command still running (r->wait.released), which the
 * caller then kills.
 */
int qz_window_command(struct qz_session *s, const struct qz_spawn_req *req,
                      const struct qz_wait_req *w, int64_t timeout_ns,
                      struct qz_window_res *r)
{
    struct qz_wait_req wait = *w;

    /* Nothing but the release interrupts the window: signals are handled after the thaw. */
    wait.interruptible = 0;
    memset(r, 0, sizeof(*r));
    r->child.pid = -1;
    r->child.pidfd = -1;
    qz_wait_init(&wait, &r->wait);
    r->freeze_rc = qz_freeze(s);
    if (r->freeze_rc != 0)
        return r->freeze_rc;
    r->spawn_rc = qz_spawn(req, &r->child);
    if (r->spawn_rc == 0) {
        wait.deadline_ns = r->child.start_ns + timeout_ns;
        wait.tick_ns = 0;
        r->wait_rc = qz_supervise(&r->child, &wait, &r->wait);
    }
    r->thaw_rc = qz_thaw(s);
    return r->spawn_rc != 0 ? r->spawn_rc : r->wait_rc != 0 ? r->wait_rc : r->thaw_rc;
}
