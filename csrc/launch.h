/*
 * launch.h: start the guardian and the watchdog as their own small program.
 *
 * Both used to be forked from the caller (a Python process of tens of MB).
 * A fork copies the caller's page tables, makes every page the caller then
 * writes fault and be copied (while frozen, too), and ending the child tears
 * that copy down again: milliseconds of CPU right after the thaw. Instead,
 * the child is started the way scripts are (CLONE_VM | CLONE_VFORK on its
 * own small stack), detaches (qz_detach) and execs `quiesce-helper`, a
 * program of a few pages built from these same sources. The helper is
 * opened once (qz_set_helper_fd) and exec'd through its fd: no path is
 * looked up when a guardian is armed.
 */
#ifndef QUIESCE_LAUNCH_H
#define QUIESCE_LAUNCH_H

#include <stddef.h>

/* cdef-begin */
/* The opened quiesce-helper program (close-on-exec), or -1 for none. */
void qz_set_helper_fd(int fd);
/* cdef-end */

/*
 * Start the helper with `argv` (argv[0] is the process name), after
 * qz_detach(devnull, keep, nkeep, argv[0]) in the child: the fds in `keep`
 * stay open under their numbers, every other is closed. Returns the pid,
 * or -errno (-ENOEXEC: no helper set; the exec's own errno if it failed).
 * All signals are blocked in the caller's thread across the start.
 */
int qz_launch_helper(char *const argv[], int devnull, const int *keep, size_t nkeep);

/* The helper's side: what it was started for. Each returns only on a bad start. */
int qz_guardian_serve(int mem_fd, int sock);
int qz_watchdog_serve(int sock, int kill_fd);

#endif
