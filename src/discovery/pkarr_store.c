/* The relay-side packet store and the client-side record cache of discovery/pkarr.h. */
#include "discovery/pkarr.h"
#include "util/error.h"

#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

/* Slot counts above this would not fit the 32-bit links and index entries. */
#define MAX_CAPACITY (1u << 24)

static uint32_t hash_key(const struct tun_pkarr_store *s, const uint8_t key[TUN_PKARR_KEY_LEN])
{
    uint8_t h[crypto_shorthash_BYTES];
    /* SipHash with a secret key: publishers pick their keys freely, but cannot aim them at
     * one chain of the index without knowing s->hash_key. Cannot fail. */
    (void)crypto_shorthash(h, key, TUN_PKARR_KEY_LEN, s->hash_key);
    return (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
}

int tun_pkarr_store_init(struct tun_pkarr_store *s, size_t capacity)
{
    memset(s, 0, sizeof *s);
    if (capacity == 0 || capacity > MAX_CAPACITY)
        return TUN_EINVAL;
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    size_t isize = 1;
    while (isize < 2 * capacity) /* load factor at most 1/2 keeps probe chains short */
        isize <<= 1;
    s->slots = calloc(capacity, sizeof *s->slots);
    s->index = calloc(isize, sizeof *s->index);
    if (s->slots == NULL || s->index == NULL) {
        tun_pkarr_store_free(s);
        return TUN_ENOMEM;
    }
    s->cap = capacity;
    s->index_mask = isize - 1;
    s->max_age = TUN_PKARR_DEFAULT_MAX_AGE;
    s->max_skew = TUN_PKARR_DEFAULT_MAX_SKEW;
    s->oldest = s->newest = NONE;
    /* Free slots are chained through `next`. */
    for (size_t i = 0; i < capacity; i++)
        s->slots[i].next = i + 1 < capacity ? (uint32_t)(i + 1) : NONE;
    s->free_head = 0;
    randombytes_buf(s->hash_key, sizeof s->hash_key);
    return 0;
}

void tun_pkarr_store_free(struct tun_pkarr_store *s)
{
    free(s->slots);
    free(s->index);
    s->slots = NULL;
    s->index = NULL;
    s->cap = s->n = 0;
}

/* Index position holding `key`, or the empty position where it would go (*found = 0). */
static size_t probe(const struct tun_pkarr_store *s, const uint8_t key[TUN_PKARR_KEY_LEN],
                    uint32_t h, int *found)
{
    size_t i = h & s->index_mask;
    for (;;) {
        uint32_t v = s->index[i];
        if (v == 0) {
            *found = 0;
            return i;
        }
        const struct tun_pkarr_slot *sl = &s->slots[v - 1];
        if (sl->hash == h && memcmp(sl->key, key, TUN_PKARR_KEY_LEN) == 0) {
            *found = 1;
            return i;
        }
        i = (i + 1) & s->index_mask;
    }
}

/* Remove index position `i` (linear probing: shift later members of the run back). */
static void index_remove(struct tun_pkarr_store *s, size_t i)
{
    size_t j = i;
    for (;;) {
        j = (j + 1) & s->index_mask;
        uint32_t v = s->index[j];
        if (v == 0)
            break;
        size_t home = s->slots[v - 1].hash & s->index_mask;
        /* The entry at j may move to i only if its home is not in (i, j] (cyclically). */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            s->index[i] = v;
            i = j;
        }
    }
    s->index[i] = 0;
}

static void unlink_slot(struct tun_pkarr_store *s, uint32_t k)
{
    struct tun_pkarr_slot *sl = &s->slots[k];
    if (sl->prev != NONE)
        s->slots[sl->prev].next = sl->next;
    else
        s->oldest = sl->next;
    if (sl->next != NONE)
        s->slots[sl->next].prev = sl->prev;
    else
        s->newest = sl->prev;
}

static void append_slot(struct tun_pkarr_store *s, uint32_t k)
{
    struct tun_pkarr_slot *sl = &s->slots[k];
    sl->prev = s->newest;
    sl->next = NONE;
    if (s->newest != NONE)
        s->slots[s->newest].next = k;
    else
        s->oldest = k;
    s->newest = k;
}

static void free_slot(struct tun_pkarr_store *s, uint32_t k)
{
    struct tun_pkarr_slot *sl = &s->slots[k];
    int found;
    size_t i = probe(s, sl->key, sl->hash, &found);
    if (found)
        index_remove(s, i);
    unlink_slot(s, k);
    sl->used = 0;
    sl->next = s->free_head;
    s->free_head = k;
    s->n--;
}

static int expired(const struct tun_pkarr_store *s, const struct tun_pkarr_slot *sl, uint64_t now)
{
    uint64_t born = sl->timestamp < sl->stored_at ? sl->timestamp : sl->stored_at;
    return now >= born && now - born >= s->max_age;
}

int tun_pkarr_store_put(struct tun_pkarr_store *s, const uint8_t *pkt, size_t len, uint64_t now)
{
    struct tun_pkarr_packet p;
    if (s->slots == NULL)
        return TUN_EINVAL;
    int rc = tun_pkarr_verify(&p, pkt, len);
    if (rc < 0)
        return rc;
    /* Written without sums that could wrap: the clock window is [now - max_age, now + skew]. */
    if ((p.timestamp > now && p.timestamp - now > s->max_skew) ||
        (p.timestamp <= now && now - p.timestamp >= s->max_age))
        return TUN_ERANGE;

    uint32_t h = hash_key(s, p.key);
    int found;
    size_t pos = probe(s, p.key, h, &found);
    uint32_t k;
    if (found) {
        k = s->index[pos] - 1;
        struct tun_pkarr_slot *sl = &s->slots[k];
        if (expired(s, sl, now)) {
            free_slot(s, k);
            pos = probe(s, p.key, h, &found);
        } else if (p.timestamp <= sl->timestamp) {
            /* The identical packet again (an HTTP retry) is not a conflict. */
            if (sl->len == len && memcmp(sl->packet, pkt, len) == 0)
                return 0;
            return TUN_EDENIED;
        } else {
            unlink_slot(s, k);
        }
    }
    if (!found) {
        if (s->free_head == NONE) {
            free_slot(s, s->oldest);
            pos = probe(s, p.key, h, &found); /* removal may have shifted the run */
        }
        k = s->free_head;
        s->free_head = s->slots[k].next;
        s->index[pos] = k + 1;
        s->n++;
    }

    /* Cache-Control for GET: the smallest record TTL. The DNS was checked by verify, so the
     * decode cannot fail; records beyond the decoder's table do not lower the TTL. */
    uint32_t min_ttl = 0;
    if (tun_dns_decode(&s->scratch, p.dns, p.dns_len) == 0) {
        for (size_t i = 0; i < s->scratch.n_rr; i++)
            if (i == 0 || s->scratch.rr[i].ttl < min_ttl)
                min_ttl = s->scratch.rr[i].ttl;
    }

    struct tun_pkarr_slot *sl = &s->slots[k];
    memcpy(sl->key, p.key, TUN_PKARR_KEY_LEN);
    memcpy(sl->packet, pkt, len);
    sl->len = (uint16_t)len;
    sl->timestamp = p.timestamp;
    sl->stored_at = now;
    sl->min_ttl = min_ttl;
    sl->hash = h;
    sl->used = 1;
    append_slot(s, k);
    return 0;
}

int tun_pkarr_store_put_payload(struct tun_pkarr_store *s, const uint8_t key[TUN_PKARR_KEY_LEN],
                                const uint8_t *payload, size_t len, uint64_t now)
{
    uint8_t pkt[TUN_PKARR_MAX_PACKET];
    int n = tun_pkarr_from_payload(pkt, sizeof pkt, key, payload, len);
    if (n < 0)
        return n;
    return tun_pkarr_store_put(s, pkt, (size_t)n, now);
}

int tun_pkarr_store_get(struct tun_pkarr_store *s, const uint8_t key[TUN_PKARR_KEY_LEN],
                        uint64_t now, struct tun_pkarr_entry *e)
{
    int found;
    if (s->slots == NULL || key == NULL)
        return 0;
    size_t pos = probe(s, key, hash_key(s, key), &found);
    if (!found)
        return 0;
    uint32_t k = s->index[pos] - 1;
    const struct tun_pkarr_slot *sl = &s->slots[k];
    if (expired(s, sl, now)) {
        free_slot(s, k);
        return 0;
    }
    if (e) {
        e->packet = sl->packet;
        e->len = sl->len;
        e->timestamp = sl->timestamp;
        e->stored_at = sl->stored_at;
        e->min_ttl = sl->min_ttl;
    }
    return 1;
}

size_t tun_pkarr_store_expire(struct tun_pkarr_store *s, uint64_t now)
{
    size_t freed = 0;
    for (size_t k = 0; k < s->cap; k++) {
        if (s->slots[k].used && expired(s, &s->slots[k], now)) {
            free_slot(s, (uint32_t)k);
            freed++;
        }
    }
    return freed;
}

/* ---- client-side cache ----------------------------------------------------------------- */

void tun_pkarr_cache_init(struct tun_pkarr_cache *c, uint32_t min_ttl, uint32_t max_ttl)
{
    memset(c, 0, sizeof *c);
    c->min_ttl = min_ttl;
    c->max_ttl = max_ttl < min_ttl ? min_ttl : max_ttl;
}

static struct tun_pkarr_cache_entry *cache_find(const struct tun_pkarr_cache *c,
                                                const uint8_t key[TUN_PKARR_KEY_LEN])
{
    for (size_t i = 0; i < TUN_PKARR_CACHE_SIZE; i++)
        if (c->e[i].used && memcmp(c->e[i].key, key, TUN_PKARR_KEY_LEN) == 0)
            return (struct tun_pkarr_cache_entry *)&c->e[i];
    return NULL;
}

int tun_pkarr_cache_put(struct tun_pkarr_cache *c, const uint8_t key[TUN_PKARR_KEY_LEN],
                        uint64_t timestamp, const struct tun_pkarr_record *r, uint64_t now)
{
    if (key == NULL || r == NULL)
        return TUN_EINVAL;
    struct tun_pkarr_cache_entry *e = cache_find(c, key);
    if (e && timestamp < e->timestamp)
        return TUN_EDENIED;
    if (e == NULL) {
        /* A free entry, else the one that expires first (expired ones come first). */
        e = &c->e[0];
        for (size_t i = 0; i < TUN_PKARR_CACHE_SIZE; i++) {
            if (!c->e[i].used) {
                e = &c->e[i];
                break;
            }
            if (c->e[i].expires_at < e->expires_at)
                e = &c->e[i];
        }
    }
    uint32_t ttl = r->ttl < c->min_ttl ? c->min_ttl : r->ttl > c->max_ttl ? c->max_ttl : r->ttl;
    memcpy(e->key, key, TUN_PKARR_KEY_LEN);
    e->used = 1;
    e->timestamp = timestamp;
    e->expires_at = now + (uint64_t)ttl * 1000000;
    e->record = *r;
    return 0;
}

const struct tun_pkarr_record *tun_pkarr_cache_get(const struct tun_pkarr_cache *c,
                                                   const uint8_t key[TUN_PKARR_KEY_LEN],
                                                   uint64_t now, uint64_t *timestamp)
{
    const struct tun_pkarr_cache_entry *e = key ? cache_find(c, key) : NULL;
    if (e == NULL || now >= e->expires_at)
        return NULL;
    if (timestamp)
        *timestamp = e->timestamp;
    return &e->record;
}

void tun_pkarr_cache_invalidate(struct tun_pkarr_cache *c, const uint8_t key[TUN_PKARR_KEY_LEN])
{
    struct tun_pkarr_cache_entry *e = key ? cache_find(c, key) : NULL;
    if (e)
        e->expires_at = 0;
}
