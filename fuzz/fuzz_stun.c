/*
 * Fuzz target for the STUN parser (src/ice/stun.c). A message that parses is checked for
 * integrity, every returned pointer is read to its length, and then everything the parser
 * understood is written again with the writer: the copy must parse to the same fields.
 * Build with libFuzzer (see fuzz/README.md) or run through fuzz/standalone.c.
 */
#include "ice/stun.h"
#include "util/error.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t key[] = "VOkJxbRl1RmTxUk/WvJxBt";

static void touch(const uint8_t *p, size_t n)
{
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < n; i++)
        sink ^= p[i];
    (void)sink;
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    size_t n = a->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    return a->ss_family == b->ss_family && memcmp(a, b, n) == 0;
}

static void run(const uint8_t *data, size_t size)
{
    struct tun_stun_msg m;
    (void)tun_stun_is_stun(data, size);
    if (tun_stun_parse(data, size, &m) != 0)
        return;
    touch(m.username, m.username_len);
    touch(m.software, m.software_len);
    touch(m.reason, m.reason_len);
    touch(m.unknown_attrs, 2 * m.unknown_attrs_count);
    if (m.n_unknown > TUN_STUN_MAX_UNKNOWN)
        abort();
    if (m.present & TUN_STUN_HAS_INTEGRITY) {
        int rc = tun_stun_check_integrity(data, size, &m, key, sizeof(key) - 1);
        if (rc != 0 && rc != TUN_ECHECKSUM)
            abort();
    } else if (tun_stun_check_integrity(data, size, &m, key, 3) != TUN_EINVAL) {
        abort();
    }
    if ((m.present & TUN_STUN_HAS_FINGERPRINT) && m.fingerprint_off != size - 8)
        abort();
    if ((m.present & TUN_STUN_HAS_ERROR) && (m.error_code < 300 || m.error_code > 699))
        abort();

    /* Re-serialise. The copy is never larger than the input, whose length fits in u16. */
    static uint8_t out[70000];
    struct tun_stun_writer w;
    tun_stun_begin(&w, out, sizeof(out), m.method, m.cls, m.txid);
    if (m.present & TUN_STUN_HAS_XOR_MAPPED)
        tun_stun_add_xor_address(&w, (const struct sockaddr *)&m.xor_mapped);
    if (m.present & TUN_STUN_HAS_MAPPED)
        tun_stun_add_address(&w, (const struct sockaddr *)&m.mapped);
    if (m.present & TUN_STUN_HAS_USERNAME)
        tun_stun_add_bytes(&w, TUN_STUN_ATTR_USERNAME, m.username, m.username_len);
    if (m.present & TUN_STUN_HAS_SOFTWARE)
        tun_stun_add_bytes(&w, TUN_STUN_ATTR_SOFTWARE, m.software, m.software_len);
    if (m.present & TUN_STUN_HAS_ERROR)
        tun_stun_add_error(&w, m.error_code, (const char *)m.reason, m.reason_len);
    if (m.present & TUN_STUN_HAS_UNKNOWN_ATTRS)
        tun_stun_add_bytes(&w, TUN_STUN_ATTR_UNKNOWN_ATTRIBUTES, m.unknown_attrs,
                           2 * m.unknown_attrs_count);
    if (m.present & TUN_STUN_HAS_PRIORITY)
        tun_stun_add_u32(&w, TUN_STUN_ATTR_PRIORITY, m.priority);
    if (m.present & TUN_STUN_HAS_USE_CANDIDATE)
        tun_stun_add_flag(&w, TUN_STUN_ATTR_USE_CANDIDATE);
    if (m.present & TUN_STUN_HAS_CONTROLLING)
        tun_stun_add_u64(&w, TUN_STUN_ATTR_ICE_CONTROLLING, m.tiebreaker);
    if (m.present & TUN_STUN_HAS_CONTROLLED)
        tun_stun_add_u64(&w, TUN_STUN_ATTR_ICE_CONTROLLED, m.tiebreaker);
    for (size_t i = 0; i < m.n_unknown; i++)
        tun_stun_add_flag(&w, m.unknown[i]);
    if (m.present & TUN_STUN_HAS_INTEGRITY)
        tun_stun_add_integrity(&w, key, sizeof(key) - 1);
    if (m.present & TUN_STUN_HAS_FINGERPRINT)
        tun_stun_add_fingerprint(&w);
    int n = tun_stun_end(&w);
    if (n < 0 || (size_t)n > size)
        abort();

    struct tun_stun_msg c;
    if (tun_stun_parse(out, (size_t)n, &c) != 0)
        abort();
    if (c.method != m.method || c.cls != m.cls || memcmp(c.txid, m.txid, 12) != 0 ||
        c.present != m.present || c.n_unknown != m.n_unknown ||
        memcmp(c.unknown, m.unknown, m.n_unknown * sizeof(m.unknown[0])) != 0 ||
        c.priority != m.priority || c.tiebreaker != m.tiebreaker || c.error_code != m.error_code ||
        c.username_len != m.username_len || c.software_len != m.software_len ||
        c.reason_len != m.reason_len || c.unknown_attrs_count != m.unknown_attrs_count)
        abort();
    if ((m.present & TUN_STUN_HAS_XOR_MAPPED) && !same_addr(&c.xor_mapped, &m.xor_mapped))
        abort();
    if ((m.present & TUN_STUN_HAS_MAPPED) && !same_addr(&c.mapped, &m.mapped))
        abort();
    if ((m.username_len && memcmp(c.username, m.username, m.username_len) != 0) ||
        (m.software_len && memcmp(c.software, m.software, m.software_len) != 0) ||
        (m.reason_len && memcmp(c.reason, m.reason, m.reason_len) != 0))
        abort();
    if ((c.present & TUN_STUN_HAS_INTEGRITY) &&
        tun_stun_check_integrity(out, (size_t)n, &c, key, sizeof(key) - 1) != 0)
        abort();
}

/* zlib's CRC-32, to repair the fingerprint of a mutated message. */
static uint32_t crc32_ref(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    }
    return ~c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size);
    /*
     * Random mutations almost never keep the length field and the fingerprint right, so also
     * feed a repaired copy (length field = size - 20, fingerprint recomputed if the message
     * ends in one) to get the mutated attributes themselves past the header checks.
     */
    if (size < TUN_STUN_HEADER || size - TUN_STUN_HEADER > 0xFFFF)
        return 0;
    uint8_t *copy = malloc(size);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[2] = (uint8_t)((size - TUN_STUN_HEADER) >> 8);
    copy[3] = (uint8_t)(size - TUN_STUN_HEADER);
    if (size >= TUN_STUN_HEADER + 8 && copy[size - 8] == 0x80 && copy[size - 7] == 0x28) {
        uint32_t fp = crc32_ref(copy, size - 8) ^ TUN_STUN_FP_XOR;
        for (int i = 0; i < 4; i++)
            copy[size - 4 + i] = (uint8_t)(fp >> (24 - 8 * i));
    }
    run(copy, size);
    free(copy);
    return 0;
}
