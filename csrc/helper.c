/*
 * helper.c: quiesce-helper, the program the guardian and the watchdog run
 * as (see launch.h). It is started only by qz_launch_helper(), detached
 * and with its fds in place:
 *
 *   quiesce-guard guardian MEM_FD SOCK     guard the session mapped from MEM_FD
 *   quiesce-watch watchdog SOCK KILL_FD    write "1" to KILL_FD if SOCK ends
 */
#define _GNU_SOURCE
#include "launch.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static int fd_arg(const char *s)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > INT_MAX)
        return -1;
    return (int)v;
}

int main(int argc, char **argv)
{
    int a, b;

    if (argc != 4 || (a = fd_arg(argv[2])) < 0 || (b = fd_arg(argv[3])) < 0) {
        static const char usage[] =
            "quiesce-helper: started by quiesce itself (the guardian and the watchdog), not by hand\n";

        if (write(2, usage, sizeof(usage) - 1) < 0)
            return 2;
        return 2;
    }
    /* exec named the process after its fd; the name it was given is argv[0]. */
    prctl(PR_SET_NAME, argv[0], 0, 0, 0);
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    if (strcmp(argv[1], "guardian") == 0)
        qz_guardian_serve(a, b);
    else if (strcmp(argv[1], "watchdog") == 0)
        qz_watchdog_serve(a, b);
    return 2;
}
