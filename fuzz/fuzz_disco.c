/*
 * Fuzz target for disco: the inner-message decoder (whatever decodes must encode back to the
 * same bytes), tun_disco_open on raw datagrams, tun_disco_open on boxes that authenticate
 * but hold arbitrary plaintext, and the path state driven by a list of operations.
 * Build with libFuzzer (see fuzz/README.md) or run through fuzz/standalone.c.
 */
#include "disco/disco.h"
#include "disco/paths.h"
#include "util/error.h"

#include <netinet/in.h>
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t pub_a[32], shared[32];

static void keys(void)
{
    static int done;
    if (done)
        return;
    /* Fixed identities: the target must be deterministic. */
    uint8_t sec_a[32], sec_b[32], pub_b[32], sk[64];
    memset(sec_a, 0xA1, 32);
    memset(sec_b, 0xB2, 32);
    if (crypto_sign_seed_keypair(pub_a, sk, sec_a) != 0 ||
        crypto_sign_seed_keypair(pub_b, sk, sec_b) != 0 ||
        tun_disco_shared_key(shared, sec_a, pub_b) != 0)
        abort();
    done = 1;
}

static void check_inner(const uint8_t *p, size_t n)
{
    struct tun_disco_msg m;
    uint8_t out[TUN_DISCO_MAX_INNER];
    if (tun_disco_decode_inner(p, n, &m) != 0)
        return;
    int len = tun_disco_encode_inner(out, sizeof out, &m);
    if (len < 0 || (size_t)len != n || memcmp(out, p, n) != 0)
        abort();
}

/* Box arbitrary plaintext properly: open must agree with the plain decoder. */
static void check_boxed(const uint8_t *p, size_t n)
{
    static uint8_t pkt[TUN_DISCO_MAX_PACKET + 64];
    if (n > TUN_DISCO_MAX_PACKET + 64 - TUN_DISCO_OVERHEAD)
        n = TUN_DISCO_MAX_PACKET + 64 - TUN_DISCO_OVERHEAD;
    memcpy(pkt, "\x1d\x15\xc0\x01\x21\x12\xa4\x42", 8);
    memcpy(pkt + 8, pub_a, 32);
    memset(pkt + 40, 0x5A, 24);
    if (crypto_box_easy_afternm(pkt + TUN_DISCO_HEADER, p, n, pkt + 40, shared) != 0)
        abort();
    size_t len = TUN_DISCO_OVERHEAD + n;
    uint8_t *c = malloc(len);
    memcpy(c, pkt, len);
    struct tun_disco_msg m1, m2;
    int rc = tun_disco_open(c, len, shared, &m1);
    free(c);
    int want;
    if (n == 0 || len > TUN_DISCO_MAX_PACKET)
        want = TUN_ELENGTH;
    else
        want = tun_disco_decode_inner(p, n, &m2);
    if (rc != want)
        abort();
    if (rc == 0 && (m1.type != m2.type || m1.n_addrs != m2.n_addrs))
        abort();
}

static void check_raw(const uint8_t *p, size_t n)
{
    struct tun_disco_msg m;
    /* Random bytes almost never authenticate; this covers the length and magic checks. */
    int rc = tun_disco_open(p, n, shared, &m);
    if (rc == 0 && !tun_disco_is_disco(p, n))
        abort();
    const uint8_t *s = tun_disco_sender(p, n);
    if (s && (s != p + TUN_DISCO_MAGIC_LEN || n <= TUN_DISCO_OVERHEAD))
        abort();
}

static void run_paths(const uint8_t *p, size_t n)
{
    struct tun_paths ps;
    tun_paths_init(&ps);
    uint64_t now = 1;
    for (size_t i = 0; i + 1 < n; i += 2) {
        uint8_t op = p[i], arg = p[i + 1];
        now += (uint64_t)(op >> 3) * 250000;
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)(1 + arg % 24));
        a.sin_addr.s_addr = htonl(0x0A000001);
        uint8_t txid[12];
        memset(txid, arg % 24, 12);
        switch (op & 7) {
        case 0:
            (void)tun_paths_add(&ps, (struct sockaddr *)&a);
            break;
        case 1: {
            uint64_t next;
            int idx = tun_paths_next_ping(&ps, now, &next);
            if (idx >= 0) {
                if ((size_t)idx >= ps.n || tun_paths_ping_sent(&ps, idx, txid, now) != 0)
                    abort();
            } else if (ps.n > 0 && next <= now) {
                abort();
            }
            break;
        }
        case 2:
        case 3: {
            int idx = tun_paths_pong(&ps, txid, (struct sockaddr *)&a, now + arg * 100u);
            if (idx >= 0 && ((size_t)idx >= ps.n || ps.p[idx].awaiting))
                abort();
            break;
        }
        case 4:
            tun_paths_traffic(&ps, now);
            break;
        default: {
            int best = tun_paths_select(&ps, now);
            if (best >= 0 && ((size_t)best >= ps.n || ps.p[best].trusted_until_us <= now))
                abort();
            break;
        }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    keys();
    switch (data[0] & 3) {
    case 0:
        check_inner(data + 1, size - 1);
        break;
    case 1:
        check_boxed(data + 1, size - 1);
        break;
    case 2:
        check_raw(data + 1, size - 1);
        break;
    default:
        run_paths(data + 1, size - 1);
        break;
    }
    return 0;
}
