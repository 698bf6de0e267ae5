/* nostr/event: the canonical serialization (checked byte for byte against Python's
 * json.dumps(separators=(',', ':'), ensure_ascii=False), which escapes exactly as
 * JSON.stringify does), ids, signatures made here, signatures made by other clients (three
 * events published on relays in 2023), tampering, and the bounds. */
#include "nostr/event.h"
#include "nostr/keys.h"
#include "util/error.h"

#include "test.h"

#include <sodium.h>
#include <stdlib.h>

static const char NSEC_HEX[] = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa";
static const char NPUB_HEX[] = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";

static void unhex(uint8_t *out, size_t n, const char *h)
{
    size_t got = 0;
    CHECK(sodium_hex2bin(out, n, h, strlen(h), NULL, &got, NULL) == 0);
    CHECK_INT_EQ(got, n);
}

static struct tun_nostr_str str(const char *s)
{
    return (struct tun_nostr_str){s, strlen(s)};
}

/* ---- serialization -------------------------------------------------------------------------*/

/* Every ASCII byte 0x00..0x7f, then é € and U+1D11E (2, 3 and 4 UTF-8 bytes). */
static char tricky_content[128 + 9];

/* json.dumps of the event below (with \077 for '?' to avoid trigraphs). */
static const char TRICKY_JSON[] =
    "[0,\"7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e\",1700000000,21059,[["
    "\"p\",\"abc\"],[\"e\"],[],[\"x\",\"a\\\"b\\\\c\\n\",\"\\t\\r\\b\\f/"
    "\"]],\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r\\u000e"
    "\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019\\u001a\\u001b"
    "\\u001c\\u001d\\u001e\\u001f !\\\"#$%&'()*+,-./0123456789:;<=>\077@ABCDEFGHIJKLMNOPQRSTUVWXYZ["
    "\\\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\177\303\251\342\202\254\360\235\204\236\"]";
static const char TRICKY_ID[] = "c6411a287bb15663ece6e3d224749eca56417e0025b7d3cead8049b32f1d474f";

static const struct tun_nostr_str tricky_p[] = {{"p", 1}, {"abc", 3}};
static const struct tun_nostr_str tricky_e[] = {{"e", 1}};
static const struct tun_nostr_str tricky_x[] = {{"x", 1}, {"a\"b\\c\n", 6}, {"\t\r\b\f/", 5}};
static const struct tun_nostr_tag tricky_tags[] = {
    {tricky_p, 2},
    {tricky_e, 1},
    {NULL, 0},
    {tricky_x, 3},
};

static struct tun_nostr_event tricky_event(void)
{
    for (int i = 0; i < 128; i++)
        tricky_content[i] = (char)i;
    memcpy(tricky_content + 128, "\303\251\342\202\254\360\235\204\236", 9);
    struct tun_nostr_event ev = {
        .created_at = 1700000000,
        .kind = 21059,
        .tags = tricky_tags,
        .ntags = 4,
        .content = {tricky_content, sizeof tricky_content},
    };
    unhex(ev.pubkey, 32, NPUB_HEX);
    return ev;
}

static void test_serialize(void)
{
    struct tun_nostr_event ev = tricky_event();
    size_t want_len = sizeof TRICKY_JSON - 1;
    CHECK_INT_EQ(want_len, 422);
    CHECK_INT_EQ(tun_nostr_event_serialized_len(&ev), want_len);

    char out[512];
    CHECK_INT_EQ(tun_nostr_event_serialize(out, sizeof out, &ev), want_len);
    CHECK_INT_EQ(strlen(out), want_len); /* the content's NUL byte is escaped */
    CHECK_MEM_EQ(out, TRICKY_JSON, want_len + 1);

    /* One byte short (no room for the NUL) is refused. */
    CHECK_INT_EQ(tun_nostr_event_serialize(out, want_len, &ev), TUN_ELENGTH);
    CHECK_INT_EQ(tun_nostr_event_serialize(NULL, 0, &ev), TUN_ELENGTH);

    uint8_t id[32], want[32];
    unhex(want, 32, TRICKY_ID);
    CHECK_INT_EQ(tun_nostr_event_id(id, &ev), 0);
    CHECK_MEM_EQ(id, want, 32);

    /* Bytes that are not UTF-8 pass through untouched (NIP-01 hashes bytes, not text). */
    struct tun_nostr_event raw = {.created_at = 0, .kind = 0, .content = {"\xff\xc0", 2}};
    unhex(raw.pubkey, 32, NPUB_HEX);
    CHECK_INT_EQ(tun_nostr_event_serialize(out, sizeof out, &raw), 82);
    CHECK_STR_EQ(out,
                 "[0,\"7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e\",0,0,[],"
                 "\"\xff\xc0\"]");

    /* Empty content, no tags, NULL pointers with zero lengths. */
    struct tun_nostr_event empty = {.created_at = 1, .kind = 1};
    CHECK_INT_EQ(tun_nostr_event_serialize(out, sizeof out, &empty), 80);
    CHECK_STR_EQ(out, "[0,\"0000000000000000000000000000000000000000000000000000000000000000\",1,1,"
                      "[],\"\"]");
}

/* ---- events signed by other clients --------------------------------------------------------*/

struct real_event {
    const char *id, *pubkey, *sig;
    int64_t created_at, kind;
    const char *content;
    const struct tun_nostr_tag *tags;
    size_t ntags;
};

static const struct tun_nostr_str real_r[] = {{"r", 1},
                                              {"https://btcplusplus.dev/talks#nostr", 35}};
static const struct tun_nostr_tag real2_tags[] = {{real_r, 2}};

#define HEX64(s)                                                                                   \
    {                                                                                              \
        s, 64                                                                                      \
    }
static const struct tun_nostr_str real3_e1[] = {
    {"e", 1}, HEX64("3de94ee418667f1567a79eb4c76ff788e39a4caf1947d5ec75fcda15d8920b0b")};
static const struct tun_nostr_str real3_e2[] = {
    {"e", 1}, HEX64("2633adacdd31915719910b84c51b6a9b4bc8cdf165073bd8d5b2db8d36dc2fb3")};
static const struct tun_nostr_str real3_p1[] = {
    {"p", 1}, HEX64("d7f0e3917c466f1e2233e9624fbd6d4bd1392dbcfcaf3574f457569d496cb731")};
static const struct tun_nostr_str real3_p2[] = {
    {"p", 1}, HEX64("43c27728028a8b631118e73a46b363b464fee19002da657cc0196e8260188a7e")};
static const struct tun_nostr_tag real3_tags[] = {
    {real3_e1, 2}, {real3_e2, 2}, {real3_p1, 2}, {real3_p1, 2}, {real3_p2, 2},
};

static const struct real_event real_events[] = {
    {
        "b12e1d13848d47e28f912bb0a8b3d6b211d1af97f60e9e10b9cf5df9e5c731ed",
        "35d26e4690cbe1a898af61cc3515661eb5fa763b57bd0b42e45099c8b32fd50f",
        "02f3e61059e99874cfd777f8cff44a2faa801429ab2cfd844adcc52e5c917ed886891d2cafab30fb4d38acfd2"
        "0a399a2fd75e7472a4d13669735dc2cea84d6b6",
        1677727939,
        0,
        "{\"name\":\"scsibug\",\"picture\":\"https://s.gravatar.com/avatar/"
        "1a425d744df94198d68dfffbf7ae51cf\",\"about\":\"author of nostr-rs-relay, operates "
        "nostr-pub.wellorder.net\",\"nip05\":\"scsibug@wellorder.net\",\"lud06\":\"\",\"lud16\":"
        "\"outsideice77@walletofsatoshi.com\",\"username\":\"scsibug\",\"display_name\":\"\","
        "\"displayName\":\"\",\"banner\":\"\",\"website\":\"\"}",
        NULL,
        0,
    },
    {
        "1b71f57e1c3365f32b2a0abd8ded19f2a5e217a6eeaf3df11fa5c904bfb90dd6",
        "35d26e4690cbe1a898af61cc3515661eb5fa763b57bd0b42e45099c8b32fd50f",
        "ec6e37c3d492654a4b8b5411b1872fc1dd7bbc3920d2c0818b177b42bd9429e206b878ad3b8fa0e72993b5818"
        "2024d32a345ce487072de897bd0061d1c5e2189",
        1681157953,
        1,
        "I will be giving a talk on Nostr at the Bitcoin++ conference in Austin TX, end of this "
        "month, hoping to meet some other nostr people!  https://btcplusplus.dev/talks#nostr",
        real2_tags,
        1,
    },
    {
        "126c4bc4a33b0b03cd947e164002066b70d97ce1c4b4f581c9f965c625069d41",
        "32e1827635450ebb3c5a7d12c1f8e7b2b514439ac10a67eef3d9fd9c5c68e245",
        "b9465f00cbc8c36c9140ad9360597b7bd16c9007bfb924576101d062f3cbaf10851950460bd876941e89d42c8"
        "5cdfb0166908a9ce33cbfa12419a4ab430df30a",
        1681657931,
        1,
        "It runs fast on my ryzen 1800x (nixos) on 16 threads:\n\nsystem_info: n_threads = 16 / 16 "
        "| AVX = 1 | AVX2 = 1 | AVX512 = 0 | FMA = 1 | NEON = 0 | ARM_FMA = 0 | F16C = 1 | FP16_VA "
        "= 0 | WASM_SIMD = 0 | BLAS = 0 | SSE3 = 1 | VSX = 0 \n\nmy m1 shows:\n\nsystem_info: "
        "n_threads = 4 / 8 | AVX = 0 | AVX2 = 0 | AVX512 = 0 | FMA = 0 | NEON = 1 | ARM_FMA = 1 | "
        "F16C = 0 | FP16_VA = 1 | WASM_SIMD = 0 | BLAS = 1 | SSE3 = 0 | VSX = 0 \n\nusing about "
        "1.5GB of ram\077  ",
        real3_tags,
        5,
    },
};

static struct tun_nostr_event load_real(const struct real_event *r)
{
    struct tun_nostr_event ev = {
        .created_at = r->created_at,
        .kind = r->kind,
        .tags = r->tags,
        .ntags = r->ntags,
        .content = str(r->content),
    };
    unhex(ev.id, 32, r->id);
    unhex(ev.pubkey, 32, r->pubkey);
    unhex(ev.sig, 64, r->sig);
    return ev;
}

static void test_real_events(void)
{
    for (size_t i = 0; i < sizeof real_events / sizeof real_events[0]; i++) {
        struct tun_nostr_event ev = load_real(&real_events[i]);
        uint8_t id[32];
        CHECK_INT_EQ(tun_nostr_event_id(id, &ev), 0);
        CHECK_MEM_EQ(id, ev.id, 32);
        CHECK_INT_EQ(tun_nostr_event_verify(&ev), 0);
    }
}

/* ---- tampering -----------------------------------------------------------------------------*/

static void test_tampering(void)
{
    const struct real_event *r = &real_events[2];
    struct tun_nostr_event ev = load_real(r);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), 0);

    /* Every byte of the id and of the signature matters. */
    for (size_t i = 0; i < 32; i++) {
        ev.id[i] ^= 0x01;
        CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECHECKSUM);
        ev.id[i] ^= 0x01;
    }
    for (size_t i = 0; i < 64; i++) {
        ev.sig[i] ^= 0x80;
        CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECRYPTO);
        ev.sig[i] ^= 0x80;
    }
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), 0);

    /* Content, created_at, kind and tags are covered by the id. */
    char content[1024];
    size_t n = strlen(r->content);
    memcpy(content, r->content, n);
    content[n - 1] = '!';
    ev.content = (struct tun_nostr_str){content, n};
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECHECKSUM);
    ev.content = (struct tun_nostr_str){content, n - 1}; /* truncated */
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECHECKSUM);
    ev = load_real(r);
    ev.created_at++;
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECHECKSUM);
    ev = load_real(r);
    ev.kind = 2;
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECHECKSUM);
    ev = load_real(r);
    ev.ntags = 4; /* one tag dropped */
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECHECKSUM);

    /* A content change with a recomputed id: the id matches, the signature does not. */
    ev = load_real(r);
    ev.content = (struct tun_nostr_str){content, n};
    CHECK_INT_EQ(tun_nostr_event_id(ev.id, &ev), 0);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECRYPTO);

    /* Another valid pubkey: the id no longer matches; with the id recomputed for that key, the
     * signature (by the original author) does not verify. */
    ev = load_real(r);
    unhex(ev.pubkey, 32, NPUB_HEX);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECHECKSUM);
    CHECK_INT_EQ(tun_nostr_event_id(ev.id, &ev), 0);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ECRYPTO);

    /* Pubkeys that are not on the curve: x = 0 (no y), x >= p. */
    ev = load_real(r);
    memset(ev.pubkey, 0, 32);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_EFORMAT);
    memset(ev.pubkey, 0xff, 32);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_EFORMAT);
}

/* ---- signing -------------------------------------------------------------------------------*/

static void test_sign(void)
{
    uint8_t sk[32], want_pub[32];
    unhex(sk, 32, NSEC_HEX);
    unhex(want_pub, 32, NPUB_HEX);

    struct tun_nostr_event ev = tricky_event();
    memset(ev.pubkey, 0, 32); /* sign fills it in */
    CHECK_INT_EQ(tun_nostr_event_sign(&ev, sk), 0);
    CHECK_MEM_EQ(ev.pubkey, want_pub, 32);
    uint8_t want_id[32];
    unhex(want_id, 32, TRICKY_ID); /* same fields, same key: the id computed by Python */
    CHECK_MEM_EQ(ev.id, want_id, 32);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), 0);

    /* Fresh auxiliary randomness: another signature of the same id, also valid. */
    struct tun_nostr_event again = ev;
    CHECK_INT_EQ(tun_nostr_event_sign(&again, sk), 0);
    CHECK_MEM_EQ(again.id, ev.id, 32);
    CHECK(memcmp(again.sig, ev.sig, 64) != 0);
    CHECK_INT_EQ(tun_nostr_event_verify(&again), 0);

    /* Signing with a freshly generated key, then checking the key pair. */
    uint8_t sk2[32], pub2[32];
    CHECK_INT_EQ(tun_nostr_secret_generate(sk2), 0);
    CHECK_INT_EQ(tun_nostr_public(pub2, sk2), 0);
    struct tun_nostr_event ev2 = {.created_at = 1, .kind = 1, .content = str("hello")};
    CHECK_INT_EQ(tun_nostr_event_sign(&ev2, sk2), 0);
    CHECK_MEM_EQ(ev2.pubkey, pub2, 32);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev2), 0);
    /* Someone else's signature does not carry over. */
    memcpy(ev2.sig, ev.sig, 64);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev2), TUN_ECRYPTO);

    /* Invalid secret keys: zero and the group order. ev stays untouched. */
    struct tun_nostr_event bad = {.created_at = 1, .kind = 1};
    struct tun_nostr_event before = bad;
    uint8_t zero[32] = {0}, order[32];
    unhex(order, 32, "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
    CHECK_INT_EQ(tun_nostr_event_sign(&bad, zero), TUN_ECRYPTO);
    CHECK_INT_EQ(tun_nostr_event_sign(&bad, order), TUN_ECRYPTO);
    CHECK_MEM_EQ(&bad, &before, sizeof bad);

    /* A malformed event is refused before any key work, and left untouched. */
    bad.kind = 70000;
    before = bad;
    CHECK_INT_EQ(tun_nostr_event_sign(&bad, sk), TUN_ERANGE);
    CHECK_MEM_EQ(&bad, &before, sizeof bad);
}

/* ---- bounds --------------------------------------------------------------------------------*/

static void test_bounds(void)
{
    static struct tun_nostr_str values[TUN_NOSTR_MAX_TAG_VALUES + 1];
    static struct tun_nostr_tag tags[TUN_NOSTR_MAX_TAGS + 1];
    for (size_t i = 0; i <= TUN_NOSTR_MAX_TAG_VALUES; i++)
        values[i] = str("v");
    for (size_t i = 0; i <= TUN_NOSTR_MAX_TAGS; i++)
        tags[i] = (struct tun_nostr_tag){values, TUN_NOSTR_MAX_TAG_VALUES};

    struct tun_nostr_event ev = {.created_at = 1, .kind = 1, .tags = tags};
    ev.ntags = TUN_NOSTR_MAX_TAGS;
    /* 256 tags of 16 one-letter values: 2 + 16 * 3 + 15 bytes each, plus separators. */
    CHECK_INT_EQ(tun_nostr_event_check(&ev), 0);
    CHECK_INT_EQ(tun_nostr_event_serialized_len(&ev), 80 + 256 * 65 + 255);
    uint8_t sk[32];
    unhex(sk, 32, NSEC_HEX);
    CHECK_INT_EQ(tun_nostr_event_sign(&ev, sk), 0);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), 0);

    ev.ntags = TUN_NOSTR_MAX_TAGS + 1;
    CHECK_INT_EQ(tun_nostr_event_check(&ev), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_nostr_event_verify(&ev), TUN_ETOOBIG);
    ev.ntags = 3;
    tags[1].n = TUN_NOSTR_MAX_TAG_VALUES + 1;
    CHECK_INT_EQ(tun_nostr_event_check(&ev), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_nostr_event_sign(&ev, sk), TUN_ETOOBIG);
    tags[1].n = TUN_NOSTR_MAX_TAG_VALUES;
    CHECK_INT_EQ(tun_nostr_event_check(&ev), 0);

    /* kind and created_at ranges. */
    ev.kind = TUN_NOSTR_MAX_KIND;
    CHECK_INT_EQ(tun_nostr_event_check(&ev), 0);
    ev.kind = TUN_NOSTR_MAX_KIND + 1;
    CHECK_INT_EQ(tun_nostr_event_check(&ev), TUN_ERANGE);
    ev.kind = -1;
    CHECK_INT_EQ(tun_nostr_event_check(&ev), TUN_ERANGE);
    ev.kind = 1;
    ev.created_at = -1;
    CHECK_INT_EQ(tun_nostr_event_check(&ev), TUN_ERANGE);
    ev.created_at = INT64_MAX;
    CHECK_INT_EQ(tun_nostr_event_check(&ev), 0);
    CHECK_INT_EQ(tun_nostr_event_serialized_len(&ev), 80 + 18 + 3 * 65 + 2);

    /* NULL pointers with non-zero counts. */
    struct tun_nostr_event nulls = {.ntags = 1};
    CHECK_INT_EQ(tun_nostr_event_check(&nulls), TUN_EINVAL);
    nulls = (struct tun_nostr_event){.content = {NULL, 1}};
    CHECK_INT_EQ(tun_nostr_event_check(&nulls), TUN_EINVAL);
    struct tun_nostr_tag null_values = {NULL, 2};
    nulls = (struct tun_nostr_event){.tags = &null_values, .ntags = 1};
    CHECK_INT_EQ(tun_nostr_event_check(&nulls), TUN_EINVAL);
    CHECK_INT_EQ(tun_nostr_event_check(NULL), TUN_EINVAL);

    /* The size bound, counted after escaping: 200,000 control bytes become 1.2 MB. */
    size_t big = 200000;
    char *ctl = calloc(1, big);
    CHECK(ctl != NULL);
    struct tun_nostr_event huge = {.content = {ctl, big}};
    CHECK_INT_EQ(tun_nostr_event_check(&huge), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_nostr_event_verify(&huge), TUN_ETOOBIG);
    huge.content.len = big / 6; /* about 200 KB escaped: fine */
    CHECK_INT_EQ(tun_nostr_event_serialized_len(&huge), 80 + 6 * (big / 6));
    free(ctl);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    test_serialize();
    test_real_events();
    test_tampering();
    test_sign();
    test_bounds();
    return TEST_DONE();
}
