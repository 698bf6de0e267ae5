/* The adaptive busy-poll rule (net/busypoll.c), with time passed in, and the poller on a real
 * libuv loop. */
#define _GNU_SOURCE
#include "net/busypoll.h"
#include "test.h"

#include <sched.h>
#include <stdlib.h>

#define US 1000ull
#define T0 (1000000 * US) /* far from 0, so the first event is a long gap */

static void test_grow_and_catch(void)
{
    struct tun_bp_state s = {0};
    tun_bp_set_max(&s, 200 * US);
    /* The first event follows a long gap: no polling. */
    CHECK_INT_EQ(tun_bp_event(&s, T0, 64), 0);
    CHECK_INT_EQ(s.window_ns, 0);
    /* The next comes 100 µs later, within the longest poll: the window opens at 50 µs. */
    CHECK_INT_EQ(tun_bp_event(&s, T0 + 100 * US, 64), 1);
    CHECK_INT_EQ(s.window_ns, 50 * US);
    CHECK_INT_EQ(s.polls, 1);
    CHECK_INT_EQ(tun_bp_expired(&s, T0 + 120 * US), 0);
    /* An event while polling is caught and restarts the window; the window stays. */
    CHECK_INT_EQ(tun_bp_event(&s, T0 + 130 * US, 64), 0);
    CHECK_INT_EQ(s.caught, 1);
    CHECK_INT_EQ(s.window_ns, 50 * US);
    CHECK_INT_EQ(tun_bp_expired(&s, T0 + 179 * US), 0);
    CHECK_INT_EQ(tun_bp_expired(&s, T0 + 180 * US), 1);
    CHECK_INT_EQ(s.poll_ns, 80 * US);
    CHECK_INT_EQ(tun_bp_expired(&s, T0 + 500 * US), 1); /* not polling: nothing to do */
    CHECK_INT_EQ(s.poll_ns, 80 * US);
    /* Slept, and the next event came 170 µs after the last: the window doubles... */
    CHECK_INT_EQ(tun_bp_event(&s, T0 + 300 * US, 64), 1);
    CHECK_INT_EQ(s.window_ns, 100 * US);
    CHECK_INT_EQ(tun_bp_expired(&s, T0 + 400 * US), 1);
    CHECK_INT_EQ(tun_bp_event(&s, T0 + 450 * US, 64), 1);
    CHECK_INT_EQ(s.window_ns, 200 * US);
    CHECK_INT_EQ(tun_bp_expired(&s, T0 + 650 * US), 1);
    /* A full-length poll that ended before the next event: that gap was longer than the
     * longest poll, so the window halves. */
    CHECK_INT_EQ(tun_bp_event(&s, T0 + 800 * US, 64), 1);
    CHECK_INT_EQ(s.window_ns, 100 * US);
    CHECK_INT_EQ(s.polls, 4);
    CHECK_INT_EQ(s.caught, 1);

    /* The window grows up to the longest poll and no further. */
    struct tun_bp_state c = {0};
    tun_bp_set_max(&c, 150 * US);
    uint64_t t = T0;
    tun_bp_event(&c, t, 64);
    for (int i = 0; i < 3; i++) {
        t += 10 * US;
        CHECK_INT_EQ(tun_bp_event(&c, t, 64), 1);
        CHECK_INT_EQ(tun_bp_event(&c, t + 5 * US, 64), 0); /* caught */
        t += 5 * US + c.window_ns;
        CHECK_INT_EQ(tun_bp_expired(&c, t), 1);
    }
    CHECK_INT_EQ(c.window_ns, 150 * US);
    CHECK_INT_EQ(c.caught, 3);
}

static void test_shrink(void)
{
    struct tun_bp_state s = {0};
    tun_bp_set_max(&s, 200 * US);
    uint64_t t = T0;
    tun_bp_event(&s, t, 64);
    for (int i = 0; i < 3; i++) { /* three short gaps after sleeping: 50, 100, 200 µs */
        t += 10 * US;
        CHECK_INT_EQ(tun_bp_event(&s, t, 64), 1);
        t += s.window_ns;
        CHECK_INT_EQ(tun_bp_expired(&s, t), 1);
    }
    CHECK_INT_EQ(s.window_ns, 200 * US);
    /* Gaps longer than the longest poll halve the window; below 50 µs it closes. */
    t += 5000 * US;
    CHECK_INT_EQ(tun_bp_event(&s, t, 64), 1);
    CHECK_INT_EQ(s.window_ns, 100 * US);
    t += s.window_ns;
    CHECK_INT_EQ(tun_bp_expired(&s, t), 1);
    t += 5000 * US;
    CHECK_INT_EQ(tun_bp_event(&s, t, 64), 1);
    CHECK_INT_EQ(s.window_ns, 50 * US);
    t += s.window_ns;
    CHECK_INT_EQ(tun_bp_expired(&s, t), 1);
    t += 5000 * US;
    CHECK_INT_EQ(tun_bp_event(&s, t, 64), 0);
    CHECK_INT_EQ(s.window_ns, 0);
    CHECK(!s.polling);
    /* Idle traffic (a keep-alive now and then) never polls. */
    for (int i = 0; i < 5; i++) {
        t += 15000000 * US;
        CHECK_INT_EQ(tun_bp_event(&s, t, 64), 0);
    }
    CHECK_INT_EQ(s.polls, 5);
}

static void test_off_and_lower_max(void)
{
    struct tun_bp_state s = {0};
    /* max 0: never polls, however short the gaps. */
    for (uint64_t t = T0; t < T0 + 100 * US; t += US)
        CHECK_INT_EQ(tun_bp_event(&s, t, 64), 0);
    CHECK_INT_EQ(s.polls, 0);
    /* A smaller maximum shrinks the window at once; 0 stops a running poll at its next check. */
    tun_bp_set_max(&s, 1000 * US);
    s.window_ns = 800 * US;
    tun_bp_set_max(&s, 300 * US);
    CHECK_INT_EQ(s.window_ns, 300 * US);
    CHECK_INT_EQ(tun_bp_event(&s, T0 + 200 * US, 64), 1);
    tun_bp_set_max(&s, 0);
    CHECK_INT_EQ(tun_bp_expired(&s, T0 + 200 * US), 1);
    /* With a longest poll under 50 µs the window opens at that. */
    struct tun_bp_state m = {0};
    tun_bp_set_max(&m, 20 * US);
    tun_bp_event(&m, T0, 64);
    CHECK_INT_EQ(tun_bp_event(&m, T0 + 10 * US, 64), 1);
    CHECK_INT_EQ(m.window_ns, 20 * US);
}

static void never_cb(uv_timer_t *t)
{
    (void)t;
}

/* Heavy traffic (more than 8 KiB a millisecond) never polls, and ends a poll under way. */
static void test_heavy(void)
{
    struct tun_bp_state s = {0};
    tun_bp_set_max(&s, 200 * US);
    uint64_t t = T0;
    tun_bp_event(&s, t, 64);
    CHECK_INT_EQ(tun_bp_event(&s, t + 10 * US, 64), 1);
    /* 16 KiB arrive within the period: polling ends at once, the window closes. */
    t += 20 * US;
    CHECK_INT_EQ(tun_bp_event(&s, t, 16384), 0);
    CHECK(!s.polling);
    CHECK_INT_EQ(s.window_ns, 0);
    CHECK_INT_EQ(s.poll_ns, 10 * US);
    CHECK_INT_EQ(tun_bp_expired(&s, t), 1);
    /* A bulk transfer: 1,500 bytes every 20 µs (75 MB/s) for 10 ms never polls. */
    for (int i = 0; i < 500; i++) {
        t += 20 * US;
        CHECK_INT_EQ(tun_bp_event(&s, t, 1500), 0);
    }
    /* Once the rate falls (a 64-byte ping-pong, 100 µs apart), the first period under the
     * limit ends the heavy mark and the gaps open the window again. */
    int started = 0;
    for (int i = 0; i < 30; i++) {
        t += 100 * US;
        started += tun_bp_event(&s, t, 64);
        tun_bp_expired(&s, t + 60 * US);
    }
    CHECK(!s.heavy);
    CHECK(started > 0);
    CHECK(s.window_ns > 0);
    /* 1,200-byte datagrams every 120 µs (80 Mbit/s): heavy, although each arrival is small. */
    struct tun_bp_state u = {0};
    tun_bp_set_max(&u, 200 * US);
    started = 0;
    t = T0;
    for (int i = 0; i < 100; i++) {
        t += 120 * US;
        started += tun_bp_event(&u, t, 1200);
        tun_bp_expired(&u, t + 60 * US);
    }
    CHECK(u.heavy);
    CHECK(started <= 2); /* at most in the first period, before the rate is known */
}

/* The process poller on a real loop: a kick polls for the window, then the loop sleeps. */
static void test_loop(void)
{
    uv_loop_t loop, other;
    uv_loop_init(&loop);
    uv_loop_init(&other);
    /* The host's loop always has referenced handles (its sockets); this timer stands in. */
    uv_timer_t keep;
    uv_timer_init(&loop, &keep);
    uv_timer_start(&keep, never_cb, 60000, 0);
    setenv("TUNNEL_BUSY_POLL_US", "300", 1);
    CHECK_INT_EQ(tun_busypoll_init(&loop), 0);
    CHECK_INT_EQ(tun_busypoll_state().max_ns, 300 * US);
    /* Two arrivals in quick succession start polling with the 50 µs window (retried, in case
     * this process was preempted between the two for longer than the 300 µs maximum). */
    uint64_t start = 0;
    for (int i = 0; i < 100 && !tun_busypoll_state().polling; i++) {
        tun_busypoll_kick(&loop, 64);
        start = uv_hrtime();
        tun_busypoll_kick(&loop, 64);
    }
    CHECK(tun_busypoll_state().polling);
    CHECK_INT_EQ(tun_busypoll_state().window_ns, 50 * US);
    /* A kick from another loop changes nothing. */
    struct tun_bp_state before = tun_busypoll_state();
    tun_busypoll_kick(&other, 64);
    CHECK_INT_EQ(tun_busypoll_state().last_ns, before.last_ns);
    int turns = 0;
    while (tun_busypoll_state().polling && turns < 100000000) {
        uv_run(&loop, UV_RUN_NOWAIT);
        turns++;
    }
    uint64_t took = uv_hrtime() - start;
    CHECK(!tun_busypoll_state().polling);
    /* It polled until the window had passed since the last arrival, and no longer counts. */
    CHECK(took >= 50 * US);
    CHECK(tun_busypoll_state().poll_ns >= 50 * US);
    /* The idle handle is unreferenced: a loop with nothing else to do ends. */
    uv_close((uv_handle_t *)&keep, NULL);
    CHECK_INT_EQ(uv_run(&loop, UV_RUN_DEFAULT), 0);
    tun_busypoll_set_max_us(5000);
    CHECK_INT_EQ(tun_busypoll_state().max_ns, TUN_BUSYPOLL_MAX_US * US);
    tun_busypoll_close();
    tun_busypoll_kick(&loop, 64); /* after close: nothing */
    CHECK(!tun_busypoll_state().polling);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);

    /* One CPU: the default is 0 (polling would hold the CPU the peer process needs). */
    unsetenv("TUNNEL_BUSY_POLL_US");
    cpu_set_t all, one;
    CHECK_INT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
    CPU_ZERO(&one);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &all)) {
            CPU_SET(c, &one);
            break;
        }
    CHECK_INT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
    uv_loop_init(&loop);
    CHECK_INT_EQ(tun_busypoll_init(&loop), 0);
    CHECK_INT_EQ(tun_busypoll_state().max_ns, 0);
    tun_busypoll_close();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    CHECK_INT_EQ(sched_setaffinity(0, sizeof(all), &all), 0);
    if (CPU_COUNT(&all) >= 2) {
        uv_loop_init(&loop);
        CHECK_INT_EQ(tun_busypoll_init(&loop), 0);
        CHECK_INT_EQ(tun_busypoll_state().max_ns, TUN_BUSYPOLL_DEFAULT_US * US);
        tun_busypoll_close();
        uv_run(&loop, UV_RUN_DEFAULT);
        CHECK_INT_EQ(uv_loop_close(&loop), 0);
    }
    uv_loop_close(&other);
}

int main(void)
{
    test_grow_and_catch();
    test_shrink();
    test_off_and_lower_max();
    test_heavy();
    test_loop();
    return TEST_DONE();
}
