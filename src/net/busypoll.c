#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "net/busypoll.h"

#include <sched.h>
#include <stdlib.h>

#define US 1000u

static uint64_t grow_start(const struct tun_bp_state *s)
{
    uint64_t g = (uint64_t)TUN_BUSYPOLL_GROW_START_US * US;
    return s->max_ns < g ? s->max_ns : g;
}

/* Whether the data arriving now makes the traffic heavy: more than TUN_BUSYPOLL_HEAVY_BYTES per
 * TUN_BUSYPOLL_PERIOD_US on average since the period began, or within it so far. */
static int heavy_traffic(struct tun_bp_state *s, uint64_t now, size_t bytes)
{
    uint64_t period = (uint64_t)TUN_BUSYPOLL_PERIOD_US * US, elapsed = now - s->rate_start_ns;
    if (elapsed >= period) {
        s->heavy = s->rate_bytes * period > (uint64_t)TUN_BUSYPOLL_HEAVY_BYTES * elapsed;
        s->rate_start_ns = now;
        s->rate_bytes = 0;
    }
    s->rate_bytes += bytes;
    if (s->rate_bytes > TUN_BUSYPOLL_HEAVY_BYTES)
        s->heavy = 1;
    return s->heavy;
}

static void end_poll(struct tun_bp_state *s, uint64_t now)
{
    s->polling = 0;
    s->poll_ns += now - s->poll_start_ns;
}

int tun_bp_event(struct tun_bp_state *s, uint64_t now, size_t bytes)
{
    uint64_t gap = now - s->last_ns;
    s->last_ns = now;
    if (heavy_traffic(s, now, bytes)) {
        /* Bulk data keeps the loop busy without polling, and polling would only take CPU from
         * the applications at either end. */
        if (s->polling)
            end_poll(s, now);
        s->window_ns = 0;
        return 0;
    }
    if (s->polling) {
        /* Polling paid off: the event came without a wake-up. Keep the window. */
        s->caught++;
        return 0;
    }
    /* The process went to sleep (or never polled) before this event. A gap the longest poll
     * would have covered grows the window; a longer one shrinks it. */
    if (s->max_ns && gap <= s->max_ns) {
        s->window_ns = s->window_ns ? s->window_ns * 2 : grow_start(s);
        if (s->window_ns > s->max_ns)
            s->window_ns = s->max_ns;
    } else {
        s->window_ns /= 2;
        if (s->window_ns < grow_start(s))
            s->window_ns = 0;
    }
    if (!s->window_ns)
        return 0;
    s->polling = 1;
    s->polls++;
    s->poll_start_ns = now;
    return 1;
}

int tun_bp_expired(struct tun_bp_state *s, uint64_t now)
{
    if (!s->polling)
        return 1;
    if (now - s->last_ns < s->window_ns)
        return 0;
    end_poll(s, now);
    return 1;
}

void tun_bp_set_max(struct tun_bp_state *s, uint64_t max_ns)
{
    s->max_ns = max_ns;
    if (s->window_ns > max_ns)
        s->window_ns = max_ns;
}

/* The process's poller. `loop` is NULL before init and after close. */
static struct {
    uv_loop_t *loop;
    uv_idle_t idle;
    struct tun_bp_state s;
} bp;

static void idle_cb(uv_idle_t *h)
{
    if (tun_bp_expired(&bp.s, uv_hrtime()))
        uv_idle_stop(h);
    else
        sched_yield(); /* anything else runnable on this CPU goes first */
}

static unsigned default_max_us(void)
{
    const char *env = getenv("TUNNEL_BUSY_POLL_US");
    if (env && *env) {
        char *end;
        unsigned long v = strtoul(env, &end, 10);
        if (!*end)
            return v > TUN_BUSYPOLL_MAX_US ? TUN_BUSYPOLL_MAX_US : (unsigned)v;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) < 2)
        return 0;
    return TUN_BUSYPOLL_DEFAULT_US;
}

int tun_busypoll_init(uv_loop_t *loop)
{
    int rc = uv_idle_init(loop, &bp.idle);
    if (rc < 0)
        return rc;
    /* Polling must never keep a process alive that has nothing else to do. */
    uv_unref((uv_handle_t *)&bp.idle);
    bp.s = (struct tun_bp_state){0};
    tun_bp_set_max(&bp.s, (uint64_t)default_max_us() * US);
    bp.loop = loop;
    return 0;
}

void tun_busypoll_kick(uv_loop_t *loop, size_t bytes)
{
    if (loop != bp.loop || !bp.s.max_ns)
        return;
    if (tun_bp_event(&bp.s, uv_hrtime(), bytes))
        uv_idle_start(&bp.idle, idle_cb);
}

void tun_busypoll_set_max_us(unsigned us)
{
    if (us > TUN_BUSYPOLL_MAX_US)
        us = TUN_BUSYPOLL_MAX_US;
    tun_bp_set_max(&bp.s, (uint64_t)us * US);
}

struct tun_bp_state tun_busypoll_state(void)
{
    return bp.s;
}

void tun_busypoll_close(void)
{
    if (!bp.loop)
        return;
    bp.loop = NULL;
    uv_close((uv_handle_t *)&bp.idle, NULL);
}
