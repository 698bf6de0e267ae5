#include "util/tokbucket.h"
#include "util/error.h"

#include <string.h>

#define MICRO 1000000ull

int tun_tokbucket_init(struct tun_tokbucket *tb, uint64_t rate, uint64_t burst, uint64_t now_us)
{
    if (!tb || rate > UINT32_MAX || burst > UINT32_MAX || (rate > 0 && burst == 0))
        return TUN_EINVAL;
    memset(tb, 0, sizeof(*tb));
    tb->rate = rate;
    tb->burst = burst;
    tb->micro = burst * MICRO;
    tb->last_us = now_us;
    return 0;
}

static void refill(struct tun_tokbucket *tb, uint64_t now_us)
{
    if (now_us <= tb->last_us)
        return; /* no time passed, or the clock stepped back: keep the old stamp */
    uint64_t cap = tb->burst * MICRO;
    uint64_t missing = cap - tb->micro;
    uint64_t elapsed = now_us - tb->last_us;
    tb->last_us = now_us;
    /* elapsed * rate may overflow for long idle times; the bucket is full long before. */
    if (elapsed >= (missing + tb->rate - 1) / tb->rate)
        tb->micro = cap;
    else
        tb->micro += elapsed * tb->rate;
}

int tun_tokbucket_take(struct tun_tokbucket *tb, uint64_t now_us, uint64_t n, uint64_t *wait_us)
{
    if (wait_us)
        *wait_us = 0;
    if (tb->rate == 0)
        return 0;
    if (n > tb->burst) {
        if (wait_us)
            *wait_us = UINT64_MAX;
        return TUN_ETOOBIG;
    }
    refill(tb, now_us);
    uint64_t need = n * MICRO;
    if (tb->micro >= need) {
        tb->micro -= need;
        return 0;
    }
    if (wait_us)
        *wait_us = (need - tb->micro + tb->rate - 1) / tb->rate;
    return TUN_EAGAIN;
}

uint64_t tun_tokbucket_available(struct tun_tokbucket *tb, uint64_t now_us)
{
    if (tb->rate == 0)
        return UINT64_MAX;
    refill(tb, now_us);
    return tb->micro / MICRO;
}
