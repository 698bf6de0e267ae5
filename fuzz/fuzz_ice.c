/*
 * Fuzz target for the ICE agent (src/ice/agent.c): candidate lines (tun_ice_cand_parse; what
 * parses must format and parse back to the same fields) and datagrams into
 * tun_ice_agent_input. The first input byte picks how the rest is used:
 *   0  a raw datagram;
 *   1  a genuine connectivity check to the agent, edited by the input (see mutate) with the
 *      length, MESSAGE-INTEGRITY and FINGERPRINT repaired, so that mutations get past
 *      authentication and reach the ICE logic (roles, USE-CANDIDATE, peer-reflexive learning);
 *   2  a response to the agent's own check, mutated and repaired the same way;
 *   3  a sequence of datagrams (2-byte length prefixes) on an advancing clock.
 * After each, everything the agent wants to send must parse, and its events and timeout must
 * be sane. Build with libFuzzer (see fuzz/README.md) or run through fuzz/standalone.c.
 */
#include "ice/agent.h"
#include "util/sha1.h"
#include "ice/stun.h"
#include "util/error.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PEER_UFRAG "FUZZ"
#define PEER_PWD   "fuzzfuzzfuzzfuzzfuzzfuzz"

static struct sockaddr_storage v4(uint32_t ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s = (struct sockaddr_in *)&ss;
    s->sin_family = AF_INET;
    s->sin_addr.s_addr = htonl(ip);
    s->sin_port = htons(port);
    return ss;
}

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

/* Fix the length field, recompute MESSAGE-INTEGRITY with key and a final FINGERPRINT. */
static void repair(uint8_t *m, size_t len, const char *key)
{
    if (len < TUN_STUN_HEADER || len % 4 || len - TUN_STUN_HEADER > 0xFFFF)
        return;
    m[2] = (uint8_t)((len - TUN_STUN_HEADER) >> 8);
    m[3] = (uint8_t)(len - TUN_STUN_HEADER);
    size_t off = TUN_STUN_HEADER;
    while (off + 4 <= len) {
        unsigned type = (unsigned)(m[off] << 8 | m[off + 1]);
        unsigned alen = (unsigned)(m[off + 2] << 8 | m[off + 3]);
        size_t next = off + 4 + ((alen + 3) & ~3u);
        if (next > len)
            return;
        if (type == TUN_STUN_ATTR_MESSAGE_INTEGRITY && alen == TUN_SHA1_LEN) {
            uint8_t hdr[TUN_STUN_HEADER];
            memcpy(hdr, m, sizeof hdr);
            size_t l = off + 4 + TUN_SHA1_LEN - TUN_STUN_HEADER;
            hdr[2] = (uint8_t)(l >> 8);
            hdr[3] = (uint8_t)l;
            struct tun_hmac_sha1 h;
            tun_hmac_sha1_init(&h, (const uint8_t *)key, strlen(key));
            tun_hmac_sha1_update(&h, hdr, sizeof hdr);
            tun_hmac_sha1_update(&h, m + TUN_STUN_HEADER, off - TUN_STUN_HEADER);
            tun_hmac_sha1_final(&h, m + off + 4);
        }
        if (type == TUN_STUN_ATTR_FINGERPRINT && alen == 4 && next == len) {
            uint32_t fp = crc32_ref(m, off) ^ TUN_STUN_FP_XOR;
            for (int i = 0; i < 4; i++)
                m[off + 4 + (size_t)i] = (uint8_t)(fp >> (24 - 8 * i));
        }
        off = next;
    }
}

/* Apply the input to msg as edits: the first byte may resize it (by -4..+4 words), then each
 * pair of bytes XORs one byte at an offset past the header. A few edits keep most of a
 * genuine message intact, which is what reaches deep into the agent. */
static size_t mutate(uint8_t *msg, size_t len, size_t cap, const uint8_t *d, size_t n)
{
    if (n == 0)
        return len;
    if (d[0] < 64) {
        long nl = (long)len + 4L * ((int)(d[0] % 9) - 4);
        if (nl < TUN_STUN_HEADER)
            nl = TUN_STUN_HEADER;
        if ((size_t)nl > cap)
            nl = (long)cap;
        if ((size_t)nl > len)
            memset(msg + len, 0, (size_t)nl - len);
        len = (size_t)nl;
    }
    if (len == TUN_STUN_HEADER)
        return len;
    for (size_t i = 1; i + 1 < n; i += 2)
        msg[TUN_STUN_HEADER + d[i] % (len - TUN_STUN_HEADER)] ^= d[i + 1];
    return len;
}

static void drain(struct tun_ice_agent *a, uint64_t now)
{
    uint8_t out[600];
    struct sockaddr_storage to;
    int len;
    for (int i = 0; i < 200; i++) {
        len = tun_ice_agent_next_send(a, now, out, sizeof out, &to);
        if (len <= 0)
            break;
        struct tun_stun_msg m;
        if (tun_stun_parse(out, (size_t)len, &m) != 0 || !(m.present & TUN_STUN_HAS_FINGERPRINT))
            abort();
        if (to.ss_family != AF_INET && to.ss_family != AF_INET6)
            abort();
    }
    struct tun_ice_event ev;
    for (int i = 0; i < 100 && tun_ice_agent_next_event(a, &ev); i++) {
        if (ev.type < TUN_ICE_EV_CANDIDATE || ev.type > TUN_ICE_EV_ROLE_CHANGED ||
            memchr(ev.reason, 0, sizeof ev.reason) == NULL)
            abort();
        if (ev.type == TUN_ICE_EV_CONNECTED) {
            struct tun_ice_pair_info info;
            if (tun_ice_agent_selected(a, &info) != 0)
                abort();
        }
    }
    if (tun_ice_agent_timeout(a, now) < -1)
        abort();
}

static void check_line(const uint8_t *data, size_t size)
{
    struct tun_ice_cand c, d;
    if (tun_ice_cand_parse((const char *)data, size, &c) != 0)
        return;
    char buf[TUN_ICE_CAND_STRMAX];
    int n = tun_ice_cand_format(&c, buf, sizeof buf);
    if (n <= 0 || tun_ice_cand_parse(buf, (size_t)n, &d) != 0)
        abort();
    if (c.type != d.type || c.priority != d.priority || strcmp(c.foundation, d.foundation) ||
        memcmp(&c.addr, &d.addr, sizeof c.addr) || memcmp(&c.rel, &d.rel, sizeof c.rel))
        abort();
}

static void feed(struct tun_ice_agent *a, const struct sockaddr_storage *from, const uint8_t *m,
                 size_t len, uint64_t now)
{
    /* An exact-size copy lets ASan catch reads past the end. */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return;
    memcpy(copy, m, len);
    int rc = tun_ice_agent_input(a, (const struct sockaddr *)from, copy, len, now);
    free(copy);
    if (rc > 1 || (rc < 0 && rc < TUN_EINTERNAL))
        abort();
    drain(a, now);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_line(data, size);
    if (size < 2)
        return 0;
    int mode = data[0] % 4, controlling = (data[0] >> 2) & 1;
    data++;
    size--;

    struct tun_ice_cfg cfg = {.controlling = controlling};
    struct tun_ice_agent *a;
    if (tun_ice_agent_new(&cfg, &a) != 0)
        abort();
    struct sockaddr_storage host = v4(0xC0000201, 5000), peer = v4(0xC0000202, 6000);
    struct sockaddr_storage other = v4(0xC0000203, (uint16_t)(7000 + data[0]));
    if (tun_ice_agent_add_host(a, (const struct sockaddr *)&host) != 0 ||
        tun_ice_agent_gather(a, NULL, 0, 0) != 0 ||
        tun_ice_agent_set_remote(a, PEER_UFRAG, PEER_PWD, 0) != 0)
        abort();
    struct tun_ice_cand rc = {.type = TUN_ICE_HOST, .priority = 2130706431, .foundation = "f"};
    rc.addr = peer;
    if (tun_ice_agent_add_remote(a, &rc, 0) != 0)
        abort();
    drain(a, 0);

    uint8_t msg[1024];
    uint8_t txid[TUN_STUN_TXID_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    const struct sockaddr_storage *from = (data[0] & 0x80) ? &other : &peer;
    if (mode == 0) {
        feed(a, from, data, size, 10);
    } else if (mode == 1) {
        char user[64];
        snprintf(user, sizeof user, "%s:%s", tun_ice_agent_ufrag(a), PEER_UFRAG);
        struct tun_stun_writer w;
        tun_stun_begin(&w, msg, sizeof msg, TUN_STUN_BINDING, TUN_STUN_REQUEST, txid);
        tun_stun_add_bytes(&w, TUN_STUN_ATTR_USERNAME, user, strlen(user));
        tun_stun_add_u32(&w, TUN_STUN_ATTR_PRIORITY, 0x6E7FFFFF);
        tun_stun_add_u64(&w,
                         controlling ? TUN_STUN_ATTR_ICE_CONTROLLED : TUN_STUN_ATTR_ICE_CONTROLLING,
                         0x8000000000000000ull);
        tun_stun_add_flag(&w, TUN_STUN_ATTR_USE_CANDIDATE);
        tun_stun_add_integrity(&w, (const uint8_t *)tun_ice_agent_pwd(a),
                               strlen(tun_ice_agent_pwd(a)));
        tun_stun_add_fingerprint(&w);
        int len = tun_stun_end(&w);
        if (len < 0)
            abort();
        size_t n = mutate(msg, (size_t)len, sizeof msg, data, size);
        repair(msg, n, tun_ice_agent_pwd(a));
        feed(a, from, msg, n, 10);
        /* and once more, now that the agent may have checked back */
        feed(a, from, msg, n, 400);
    } else if (mode == 2) {
        /* The agent's first check went out in drain(); make it send a retransmission and
         * answer that. */
        uint8_t out[600];
        struct sockaddr_storage to;
        int len = 0;
        for (uint64_t t = 0; t < 5000 && len <= 0; t += 50)
            len = tun_ice_agent_next_send(a, t, out, sizeof out, &to);
        struct tun_stun_msg m;
        if (len > 0 && tun_stun_parse(out, (size_t)len, &m) == 0) {
            int rl =
                (data[0] & 1)
                    ? tun_stun_binding_error(msg, sizeof msg, m.txid, 487, "Role Conflict", NULL, 0,
                                             (const uint8_t *)PEER_PWD, strlen(PEER_PWD))
                    : tun_stun_binding_success(msg, sizeof msg, m.txid,
                                               (const struct sockaddr *)&host,
                                               (const uint8_t *)PEER_PWD, strlen(PEER_PWD));
            if (rl < 0)
                abort();
            size_t n = mutate(msg, (size_t)rl, sizeof msg, data + 1, size - 1);
            repair(msg, n, PEER_PWD);
            feed(a, from, msg, n, 5000);
        }
    } else {
        uint64_t now = 10;
        size_t off = 0;
        while (off + 2 <= size) {
            size_t n = (size_t)(data[off] << 8 | data[off + 1]) % 700;
            off += 2;
            if (n > size - off)
                n = size - off;
            feed(a, (n & 1) ? &other : &peer, data + off, n, now);
            off += n;
            now += 1000;
        }
    }
    tun_ice_agent_stop(a);
    drain(a, 100000);
    tun_ice_agent_free(a);
    return 0;
}
