/*
 * floor.c: the least a frozen window can cost, to measure quiesce against.
 *
 *     floor N mount...
 *
 * Opens every mount point first, then N times: takes a CLOCK_MONOTONIC
 * timestamp, FIFREEZE every mount in the order given, FITHAW them in reverse,
 * takes a second timestamp. Prints one window (ns) per line, after the last
 * window, so nothing but the ioctls runs between the two timestamps. No
 * guardian, no ledger, no lock: this program is only safe on throw-away loop
 * filesystems whose owner thaws them if it dies (bench/compare_window.py and
 * bench/conftest.py do).
 *
 * Exit status: 0, 1 for bad usage or an unopenable mount, 2 for a failed
 * FIFREEZE (what it froze is thawed first), 3 for a failed FITHAW.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Thaw fds[0..n) last first; returns the index of the first failure or -1. */
static int thaw_down(const int *fds, int n, int *err)
{
    int failed = -1;

    for (int i = n; i-- > 0;) {
        if (ioctl(fds[i], FITHAW, 0) != 0 && failed < 0) {
            failed = i;
            *err = errno;
        }
    }
    return failed;
}

int main(int argc, char **argv)
{
    char *end;
    long reps;
    int n = argc - 2, status = 0;
    int *fds;
    int64_t *windows;

    if (argc < 3) {
        fprintf(stderr, "usage: %s N mount...\n", argv[0]);
        return 1;
    }
    reps = strtol(argv[1], &end, 10);
    if (*end != '\0' || reps < 1 || reps > 1000000) {
        fprintf(stderr, "floor: N must be an integer in 1..1000000, not %s\n", argv[1]);
        return 1;
    }
    fds = calloc((size_t)n, sizeof(*fds));
    windows = calloc((size_t)reps, sizeof(*windows));
    if (fds == NULL || windows == NULL) {
        perror("floor: calloc");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        fds[i] = open(argv[i + 2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fds[i] < 0) {
            fprintf(stderr, "floor: open %s: %s\n", argv[i + 2], strerror(errno));
            return 1;
        }
    }

    for (long r = 0; r < reps; r++) {
        int64_t t0, t1;
        int frozen = 0, err = 0, bad;

        t0 = now_ns();
        for (; frozen < n; frozen++) {
            if (ioctl(fds[frozen], FIFREEZE, 0) != 0) {
                err = errno;
                break;
            }
        }
        if (frozen < n) {
            thaw_down(fds, frozen, &bad);
            fprintf(stderr, "floor: FIFREEZE %s: %s\n", argv[frozen + 2], strerror(err));
            return 2;
        }
        bad = thaw_down(fds, n, &err);
        t1 = now_ns();
        if (bad >= 0) {
            fprintf(stderr, "floor: FITHAW %s: %s\n", argv[bad + 2], strerror(err));
            status = 3;
            break;
        }
        windows[r] = t1 - t0;
    }

    for (long r = 0; r < reps && windows[r] != 0; r++)
        printf("%lld\n", (long long)windows[r]);
    return status;
}
