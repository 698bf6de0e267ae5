/* Per-address rate limits of the relay's discovery API (src/relay/iplimit.c). */
#include "relay/iplimit.h"
#include "test.h"
#include "util/error.h"

#include <stdio.h>

#define SEC 1000000ull

static void burst_then_rate(void)
{
    struct tun_iplimit l;
    CHECK_INT_EQ(tun_iplimit_init(&l, 4, 10, 30), 0);
    uint64_t t = 5 * SEC;
    for (int i = 0; i < 30; i++)
        CHECK_INT_EQ(tun_iplimit_take(&l, "192.0.2.1", t, NULL), 0);
    uint32_t retry = 0;
    CHECK_INT_EQ(tun_iplimit_take(&l, "192.0.2.1", t, &retry), TUN_EAGAIN);
    CHECK_INT_EQ(retry, 1);
    /* Another address has its own bucket. */
    CHECK_INT_EQ(tun_iplimit_take(&l, "192.0.2.2", t, NULL), 0);
    /* 10 per second: after 0.1 s one more request passes, the next does not. */
    CHECK_INT_EQ(tun_iplimit_take(&l, "192.0.2.1", t + SEC / 10, NULL), 0);
    CHECK_INT_EQ(tun_iplimit_take(&l, "192.0.2.1", t + SEC / 10, NULL), TUN_EAGAIN);
    /* After 3 s the bucket is full again. */
    for (int i = 0; i < 30; i++)
        CHECK_INT_EQ(tun_iplimit_take(&l, "192.0.2.1", t + 4 * SEC, NULL), 0);
    tun_iplimit_free(&l);
}

static void bounded_table(void)
{
    /* Four slots and a thousand addresses: memory stays at four entries; an evicted address
     * comes back with a full bucket (looser, never stricter), and the most recent ones keep
     * their state. */
    struct tun_iplimit l;
    CHECK_INT_EQ(tun_iplimit_init(&l, 4, 1, 2), 0);
    char a[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(a, sizeof(a), "198.51.100.%d", i % 250);
        CHECK_INT_EQ(tun_iplimit_take(&l, a, SEC + (uint64_t)i, NULL), 0);
    }
    /* The last address used is still in the table, with one token left of two. */
    CHECK_INT_EQ(tun_iplimit_take(&l, "198.51.100.249", SEC + 1000, NULL), 0);
    CHECK_INT_EQ(tun_iplimit_take(&l, "198.51.100.249", SEC + 1000, NULL), TUN_EAGAIN);
    /* Keys longer than the slot are cut, not overflowed. */
    CHECK_INT_EQ(
        tun_iplimit_take(&l, "0123456789012345678901234567890123456789012345678901234", SEC, NULL),
        0);
    tun_iplimit_free(&l);
}

static void unlimited_and_bad(void)
{
    struct tun_iplimit l;
    CHECK_INT_EQ(tun_iplimit_init(&l, 1, 0, 0), 0);
    for (int i = 0; i < 1000; i++)
        CHECK_INT_EQ(tun_iplimit_take(&l, "192.0.2.1", 1, NULL), 0);
    tun_iplimit_free(&l);
    CHECK_INT_EQ(tun_iplimit_init(&l, 0, 10, 30), TUN_EINVAL);
    CHECK_INT_EQ(tun_iplimit_init(&l, 4, 10, 0), TUN_EINVAL);
}

int main(void)
{
    burst_then_rate();
    bounded_table();
    unlimited_and_bad();
    return TEST_DONE();
}
