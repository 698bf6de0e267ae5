/*
 * Per-source rate limiting with bounded memory, sans-IO: a fixed table of token buckets keyed
 * by the requester's address (text, without the port). A source not in the table takes the
 * least recently used slot with a full bucket, so a flood of addresses costs memory for
 * `slots` entries at most and can only ever make the limit *looser* for an evicted source,
 * never block an honest one for long.
 *
 * The relay uses it for its discovery API (`/pkarr`), answering 429 with Retry-After.
 */
#ifndef TUN_RELAY_IPLIMIT_H
#define TUN_RELAY_IPLIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "util/tokbucket.h"

#define TUN_IPLIMIT_KEY_MAX 48 /* an IPv6 address text with a scope fits */

struct tun_iplimit_slot {
    char key[TUN_IPLIMIT_KEY_MAX];
    struct tun_tokbucket tb;
    uint64_t used_us; /* 0: free */
};

struct tun_iplimit {
    struct tun_iplimit_slot *slots;
    size_t n;
    uint64_t rate, burst;
};

/* Allocate `n` slots (n >= 1) for `rate` requests per second with bursts of `burst` (rate 0:
 * no limit). Returns 0, TUN_EINVAL or TUN_ENOMEM. */
int tun_iplimit_init(struct tun_iplimit *l, size_t n, uint64_t rate, uint64_t burst);

/*
 * One request from `key` (an address as text, no port; longer keys are cut) at `now_us`.
 * Returns 0 when allowed, or TUN_EAGAIN with `*retry_s` (may be NULL) = whole seconds to wait.
 */
int tun_iplimit_take(struct tun_iplimit *l, const char *key, uint64_t now_us, uint32_t *retry_s);

void tun_iplimit_free(struct tun_iplimit *l);

#endif
