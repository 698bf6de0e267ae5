/*
 * A token bucket, sans-IO: the caller passes the current time (microseconds, any monotonic
 * origin) to every call, so tests drive it with simulated time.
 *
 * Tokens are bytes (or any unit). The bucket holds at most `burst` tokens and refills at `rate`
 * tokens per second; it starts full. Internally tokens are kept in millionths so that refill
 * is exact to the microsecond for every rate (no rounding drift over long runs).
 *
 * Limits: rate and burst up to 2^32 - 1. A rate of 0 means "unlimited": take() always
 * succeeds. Time that goes backwards is treated as no time passing.
 */
#ifndef TUN_UTIL_TOKBUCKET_H
#define TUN_UTIL_TOKBUCKET_H

#include <stdint.h>

struct tun_tokbucket {
    uint64_t rate;  /* tokens per second, 0 = unlimited */
    uint64_t burst; /* capacity in tokens */
    uint64_t micro; /* current fill in millionths of a token, <= burst * 1e6 */
    uint64_t last_us;
};

/*
 * Set up a full bucket. Returns 0, or TUN_EINVAL when rate or burst exceed 2^32 - 1 or the
 * bucket is limited (rate > 0) with burst 0.
 */
int tun_tokbucket_init(struct tun_tokbucket *tb, uint64_t rate, uint64_t burst, uint64_t now_us);

/*
 * Take `n` tokens at time `now_us`. Returns
 *   0            the tokens were taken;
 *   TUN_EAGAIN   not enough tokens now; nothing was taken and `*wait_us` (may be NULL) is the
 *                smallest wait after which the same take() succeeds (if nothing else takes);
 *   TUN_ETOOBIG  n > burst: this take can never succeed (`*wait_us` is UINT64_MAX).
 */
int tun_tokbucket_take(struct tun_tokbucket *tb, uint64_t now_us, uint64_t n, uint64_t *wait_us);

/* Whole tokens available at `now_us` (UINT64_MAX when unlimited). Refills as a side effect. */
uint64_t tun_tokbucket_available(struct tun_tokbucket *tb, uint64_t now_us);

#endif
