/*
 * exit_stamp: the child of bench/supervise.py.
 *
 *   exit_stamp            print CLOCK_MONOTONIC ns, then _exit(0)
 *   exit_stamp run US     sleep US microseconds first (a script that works a while)
 *   exit_stamp hang       ignore SIGTERM and sleep until SIGKILL (a script past its timeout)
 *
 * The stamp is taken as late as possible: only the formatting, one write(2)
 * of about 20 bytes and _exit(2) come after it. The supervisor's noticing
 * time minus the stamp is the completion latency.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int usage(void)
{
    static const char msg[] = "usage: exit_stamp [run MICROSECONDS | hang]\n";

    if (write(2, msg, sizeof(msg) - 1) < 0)
        return 2;
    return 2;
}

static void sleep_us(long long us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int main(int argc, char **argv)
{
    struct timespec now;
    char line[32];
    int n;

    if (argc == 2 && strcmp(argv[1], "hang") == 0) {
        signal(SIGTERM, SIG_IGN);
        for (;;)
            pause();
    }
    if (argc == 3 && strcmp(argv[1], "run") == 0) {
        char *end;
        long long us = strtoll(argv[2], &end, 10);

        if (*argv[2] == '\0' || *end != '\0' || us < 0)
            return usage();
        sleep_us(us);
    } else if (argc != 1) {
        return usage();
    }

    clock_gettime(CLOCK_MONOTONIC, &now);
    n = snprintf(line, sizeof(line), "%lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    if (write(1, line, (size_t)n) != n)
        _exit(1);
    _exit(0);
}
