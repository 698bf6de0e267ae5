#include "relay/iplimit.h"

#include <stdlib.h>
#include <string.h>

#include "util/error.h"

int tun_iplimit_init(struct tun_iplimit *l, size_t n, uint64_t rate, uint64_t burst)
{
    memset(l, 0, sizeof(*l));
    if (n == 0 || (rate && !burst) || rate > UINT32_MAX || burst > UINT32_MAX)
        return TUN_EINVAL;
    l->slots = calloc(n, sizeof(*l->slots));
    if (!l->slots)
        return TUN_ENOMEM;
    l->n = n;
    l->rate = rate;
    l->burst = burst;
    return 0;
}

int tun_iplimit_take(struct tun_iplimit *l, const char *key, uint64_t now_us, uint32_t *retry_s)
{
    if (!l->rate)
        return 0;
    char k[TUN_IPLIMIT_KEY_MAX];
    size_t kl = strlen(key);
    if (kl >= sizeof(k))
        kl = sizeof(k) - 1;
    memcpy(k, key, kl);
    k[kl] = '\0';
    if (now_us == 0)
        now_us = 1; /* 0 marks a free slot */
    /* A linear scan: the table is small (hundreds) and only HTTP requests come here. */
    struct tun_iplimit_slot *s = NULL, *lru = NULL;
    for (size_t i = 0; i < l->n; i++) {
        struct tun_iplimit_slot *t = &l->slots[i];
        if (t->used_us && strcmp(t->key, k) == 0) {
            s = t;
            break;
        }
        if (!lru || t->used_us < lru->used_us)
            lru = t;
    }
    if (!s) {
        s = lru;
        memcpy(s->key, k, kl + 1);
        if (tun_tokbucket_init(&s->tb, l->rate, l->burst, now_us) != 0)
            return 0; /* cannot happen: init checked rate and burst */
    }
    s->used_us = now_us;
    uint64_t wait = 0;
    if (tun_tokbucket_take(&s->tb, now_us, 1, &wait) == 0)
        return 0;
    if (retry_s) {
        uint64_t sec = (wait + 999999) / 1000000;
        *retry_s = sec > UINT32_MAX ? UINT32_MAX : (uint32_t)(sec ? sec : 1);
    }
    return TUN_EAGAIN;
}

void tun_iplimit_free(struct tun_iplimit *l)
{
    free(l->slots);
    memset(l, 0, sizeof(*l));
}
