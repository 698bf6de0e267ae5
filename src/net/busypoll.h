/*
 * Adaptive busy polling: after I/O, keep the loop polling for a short while instead of
 * sleeping, when the next event has tended to come soon.
 *
 * Why: a request/response exchange through the tunnel hands a packet from process to process
 * six times per round trip. Each hand-off to a process that sleeps in epoll_wait costs a
 * wake-up, and in a virtual machine a wake-up of an idle vCPU is an exit to the hypervisor
 * (tens of µs) unless the guest kernel polls before halting, which many VMs do not
 * (cpuidle-haltpoll with guest_halt_poll_ns = 0). A process that is still polling when the
 * packet arrives pays none of that. docs/net.md has the measurements.
 *
 * How: the data path calls tun_busypoll_kick() whenever data arrives (the endpoint UDP socket,
 * a forwarded TCP connection, a forwarded UDP socket). After a kick the loop keeps polling
 * (a libuv idle handle: epoll_wait with timeout 0, and sched_yield so that any other runnable
 * task on this CPU goes first) until `window` has passed without another kick. The window
 * adapts like the kernel's haltpoll governor: when the next kick comes after the process went
 * to sleep but within `max`, the window doubles (from 50 µs, capped at `max`); when it comes
 * later than `max`, the window halves, and below 50 µs it is 0. So idle or sparse traffic
 * (keep-alives, typing, paths with a round trip over `max`) never polls, and a busy exchange
 * polls only through gaps shorter than `max`. Heavy traffic (more than 8 KiB per millisecond
 * arriving, 64 Mbit/s) never polls: a bulk transfer keeps the loop busy anyway, and polling
 * would take CPU from the applications at either end (docs/net.md measured 12-18 % less
 * throughput on two CPUs).
 *
 * One poller per process, bound to the host's loop: kicks from any other loop (the C tests)
 * do nothing. Every function must be called on that loop's thread.
 *
 * Depends on libuv and libc only.
 */
#ifndef TUN_NET_BUSYPOLL_H
#define TUN_NET_BUSYPOLL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Default longest poll (µs) on a machine where this process may run on two CPUs or more. */
#define TUN_BUSYPOLL_DEFAULT_US 200
/* Largest accepted setting (µs). */
#define TUN_BUSYPOLL_MAX_US 1000
/* The window a first short gap opens, and the smallest window kept when shrinking (µs). */
#define TUN_BUSYPOLL_GROW_START_US 50
/* Traffic is heavy (no polling) above this many bytes arriving per period. */
#define TUN_BUSYPOLL_HEAVY_BYTES 8192
#define TUN_BUSYPOLL_PERIOD_US   1000

/* The adaptive rule on its own, with time passed in (sans-IO; tested in test_busypoll.c). */
struct tun_bp_state {
    uint64_t max_ns;    /* 0: never poll */
    uint64_t window_ns; /* how long to poll after the latest event */
    uint64_t last_ns;   /* time of the latest event */
    int polling;        /* between a start and a stop */
    /* Counters: polls started, events that arrived while polling, time spent polling. */
    uint64_t polls, caught, poll_ns;
    uint64_t poll_start_ns;
    uint64_t rate_start_ns, rate_bytes; /* bytes arrived since the period began */
    int heavy;                          /* the traffic is heavy: no polling */
};

/* `bytes` of data arrived at `now`. Returns 1 when polling should start (it was not polling and
 * the window is not 0), else 0. */
int tun_bp_event(struct tun_bp_state *s, uint64_t now, size_t bytes);
/* Called while polling: returns 1 when polling should stop at `now` (the window has passed
 * since the latest event, or heavy traffic ended the poll), else 0. */
int tun_bp_expired(struct tun_bp_state *s, uint64_t now);
/* Set the longest poll; 0 turns polling off (the window shrinks to fit). */
void tun_bp_set_max(struct tun_bp_state *s, uint64_t max_ns);

/* Bind the process's poller to `loop`. The default longest poll is TUN_BUSYPOLL_DEFAULT_US
 * when the process may run on at least two CPUs, else 0 (polling on the only CPU would delay
 * the very process it waits for); the environment variable TUNNEL_BUSY_POLL_US (0–1000)
 * replaces that default. Returns 0 or a libuv error. */
int tun_busypoll_init(uv_loop_t *loop);
/* `bytes` of data arrived on `loop`. Cheap: a clock read and a few comparisons. */
void tun_busypoll_kick(uv_loop_t *loop, size_t bytes);
/* Set the longest poll in µs (0–TUN_BUSYPOLL_MAX_US; larger values are capped). */
void tun_busypoll_set_max_us(unsigned us);
/* The state and counters (zeroes before init). */
struct tun_bp_state tun_busypoll_state(void);
/* Stop polling and close the idle handle; later kicks do nothing. */
void tun_busypoll_close(void);

#endif
