/*
 * libFuzzer target for the text codecs of keys and tokens: base32, bech32, tokens, EndpointIds
 * and Nostr keys. Besides "no crash, no out-of-bounds access", it checks that every accepted
 * input is canonical: re-encoding what was decoded gives the input back (lowercased where the
 * format is case-insensitive). Build and run:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Ibuild fuzz/fuzz_codecs.c \
 *     src/util/base32.c src/util/bech32.c src/util/token.c src/util/error.c \
 *     src/identity/identity.c src/nostr/keys.c \
 *     $(pkg-config --cflags --libs libsodium libsecp256k1 libuv) -o build/fuzz_codecs
 *   build/fuzz_codecs -max_total_time=60 -max_len=128
 */
#include "identity/identity.h"
#include "nostr/keys.h"
#include "util/base32.h"
#include "util/base64.h"
#include "util/bech32.h"
#include "util/error.h"
#include "util/token.h"

#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int cond)
{
    if (!cond)
        abort();
}

static void lower(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (src[i] >= 'A' && src[i] <= 'Z') ? (char)(src[i] - 'A' + 'a') : src[i];
}

static void fuzz_base32(const char *s, size_t n)
{
    uint8_t out[256];
    size_t pos = (size_t)-1;
    int r = tun_base32_decode(out, sizeof out, s, n, &pos);
    if (r >= 0) {
        char again[512], low[512];
        require(n < sizeof low);
        require(tun_base32_encode(again, sizeof again, out, (size_t)r) == (int)n);
        lower(low, s, n);
        require(memcmp(again, low, n) == 0);
    } else if (r == TUN_EFORMAT || r == TUN_EINVAL || r == TUN_ERANGE) {
        require(pos < n);
    }
}

/* Strict base64: whatever decodes must encode back to exactly the input. */
static void fuzz_base64(const char *s, size_t n)
{
    uint8_t out[160];
    size_t len = 0;
    if (tun_base64_decode(out, sizeof out, &len, s, n) == 0) {
        char again[256];
        require(len <= sizeof out);
        sodium_bin2base64(again, sizeof again, out, len, sodium_base64_VARIANT_ORIGINAL);
        require(strlen(again) == n && memcmp(again, s, n) == 0);
    }
}

static void fuzz_bech32(const char *s, size_t n)
{
    char hrp[TUN_BECH32_MAX_LEN + 1];
    uint8_t d5[TUN_BECH32_MAX_LEN];
    size_t pos = (size_t)-1;
    int r = tun_bech32_decode(hrp, sizeof hrp, d5, sizeof d5, s, n, &pos);
    if (r >= 0) {
        char again[TUN_BECH32_MAX_LEN + 1], low[TUN_BECH32_MAX_LEN + 1];
        require(tun_bech32_encode(again, sizeof again, hrp, d5, (size_t)r) == (int)n);
        lower(low, s, n);
        require(memcmp(again, low, n) == 0);
    } else if (pos != (size_t)-1) {
        require(pos < n);
    }
    uint8_t bytes[TUN_BECH32_MAX_LEN];
    int b = tun_bech32_decode_bytes(hrp, sizeof hrp, bytes, sizeof bytes, s, n, NULL);
    if (b >= 0) {
        char again[TUN_BECH32_MAX_LEN + 1];
        require(tun_bech32_encode_bytes(again, sizeof again, hrp, bytes, (size_t)b) == (int)n);
    }
}

static void fuzz_token(const char *s, size_t n)
{
    size_t pos = (size_t)-1;
    int r = tun_token_validate(s, n, &pos);
    if (r == 0) {
        char check;
        require(n == TUN_TOKEN_LEN && s[0] == TUN_TOKEN_PREFIX);
        require(tun_token_check_char(s + 1, TUN_TOKEN_BODY_LEN, &check, NULL) == 0);
        require(check == s[TUN_TOKEN_LEN - 1]);
    } else if (r == TUN_ERANGE || r == TUN_EFORMAT) {
        require(pos < n);
    }
    char check;
    (void)tun_token_check_char(s, n, &check, NULL);
}

static void fuzz_endpoint_id(const char *s, size_t n)
{
    uint8_t pub[TUN_IDENTITY_PUBLIC_LEN];
    if (tun_endpoint_id_parse(pub, s, n, NULL) == 0 && n == TUN_ENDPOINT_ID_LEN) {
        char id[TUN_ENDPOINT_ID_LEN + 1], low[TUN_ENDPOINT_ID_LEN];
        tun_endpoint_id_format(id, pub);
        lower(low, s, n);
        require(memcmp(id, low, n) == 0);
    }
}

static void fuzz_nostr(const char *s, size_t n)
{
    uint8_t key[TUN_NOSTR_KEY_LEN];
    char text[TUN_NOSTR_BECH32_LEN + 1];
    if (tun_nostr_npub_parse(key, s, n, NULL) == 0 && n == TUN_NOSTR_BECH32_LEN) {
        tun_nostr_npub_encode(text, key);
        require(strncasecmp(text, s, n) == 0);
    }
    if (tun_nostr_nsec_parse(key, s, n, NULL) == 0 && n == TUN_NOSTR_BECH32_LEN) {
        tun_nostr_nsec_encode(text, key);
        require(strncasecmp(text, s, n) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        require(sodium_init() >= 0);
        ready = 1;
    }
    if (size > 200)
        return 0;
    /* A private copy so that reads past `size` are caught by ASan. */
    char *s = malloc(size ? size : 1);
    require(s != NULL);
    memcpy(s, data, size);
    fuzz_base32(s, size);
    fuzz_base64(s, size);
    fuzz_bech32(s, size);
    fuzz_token(s, size);
    fuzz_endpoint_id(s, size);
    fuzz_nostr(s, size);
    free(s);
    return 0;
}
