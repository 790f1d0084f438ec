/*
 * spinner: the CPU-bound process of bench/rcu_cost.py.
 *
 *   spinner CPU MAX_MILLISECONDS THRESHOLD_NS
 *
 * Pins itself to CPU, prints "ready NOW_NS", then reads CLOCK_MONOTONIC in
 * a tight loop until SIGTERM (or MAX_MILLISECONDS, a bound for a caller that
 * died). Whenever two consecutive reads are more than
 * THRESHOLD_NS apart, the CPU was taken from it (an interrupt, an IPI, another
 * task): it records the gap's start and length. At the end it prints
 * "iterations N FIRST_NS LAST_NS", then one "gap START_NS LENGTH_NS" line per
 * gap. Nothing is printed while spinning, so the measurement makes no system
 * call of its own (the clock is read through the vDSO).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_GAPS 1000000

static long long starts[MAX_GAPS];
static long long lengths[MAX_GAPS];

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static long long now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    cpu_set_t set;
    long long duration_ns, threshold_ns, first, prev, t, end, iterations = 0;
    long n = 0;
    struct sigaction sa = {.sa_handler = on_term};

    if (argc != 4) {
        fprintf(stderr, "usage: spinner CPU MAX_MILLISECONDS THRESHOLD_NS\n");
        return 2;
    }
    CPU_ZERO(&set);
    CPU_SET(atoi(argv[1]), &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) {
        perror("sched_setaffinity");
        return 1;
    }
    if (sigaction(SIGTERM, &sa, NULL) != 0) {
        perror("sigaction");
        return 1;
    }
    duration_ns = atoll(argv[2]) * 1000000LL;
    threshold_ns = atoll(argv[3]);
    first = now_ns();
    end = first + duration_ns;
    printf("ready %lld\n", first);
    fflush(stdout);
    first = prev = now_ns(); /* the spinning starts here: the print is no gap */
    do {
        t = now_ns();
        if (t - prev > threshold_ns && n < MAX_GAPS) {
            starts[n] = prev;
            lengths[n] = t - prev;
            n++;
        }
        prev = t;
        iterations++;
    } while (t < end && !stop);
    printf("iterations %lld %lld %lld\n", iterations, first, prev);
    for (long i = 0; i < n; i++)
        printf("gap %lld %lld\n", starts[i], lengths[i]);
    return 0;
}
