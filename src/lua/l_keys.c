/*
 * tunnel.core.keys: identities, tokens, Nostr keys and the text codecs behind them, for Lua.
 *
 * Keys are binary Lua strings (32 bytes). A wrong-sized key or a wrong argument type is a
 * programming error and raises; text that fails to parse is a runtime failure and returns
 * nil, message, code (code = "ECHECKSUM", "ELENGTH", ... from tun_err_name()). Messages never
 * quote secret material: at most one character that is not part of any valid key.
 * tunnel.keys builds the file-level API on top of this.
 */
#include "lua/modules.h"

#include "identity/identity.h"
#include "nostr/keys.h"
#include "util/base64.h"
#include "util/base32.h"
#include "util/bech32.h"
#include "util/error.h"
#include "util/token.h"

#include <lauxlib.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define NO_POS SIZE_MAX

/* A string argument of exactly `n` bytes (a binary key). */
static const uint8_t *check_key(lua_State *L, int idx, size_t n, const char *what)
{
    size_t len;
    const char *s = luaL_checklstring(L, idx, &len);
    if (len != n)
        luaL_argerror(L, idx,
                      lua_pushfstring(L, "%s must be %d bytes, got %d", what, (int)n, (int)len));
    return (const uint8_t *)s;
}

/* Readable name of one character: 'x', a space, or a byte value. */
static const char *describe_char(char buf[16], unsigned char c)
{
    if (c > 32 && c < 127)
        snprintf(buf, 16, "'%c'", c);
    else if (c == ' ')
        snprintf(buf, 16, "a space");
    else
        snprintf(buf, 16, "byte 0x%02x", c);
    return buf;
}

/* Push nil, message, code and return 3. The message is already on the stack. */
static int fail_with_top(lua_State *L, int code)
{
    lua_pushnil(L);
    lua_insert(L, -2);
    lua_pushstring(L, tun_err_name(code));
    return 3;
}

/* nil, formatted message, code. */
static int fail(lua_State *L, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    return fail_with_top(L, code);
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* ---- Ed25519 identities --------------------------------------------------------------------*/

static int l_ed25519_secret(lua_State *L)
{
    uint8_t secret[TUN_IDENTITY_SECRET_LEN];
    if (tun_identity_generate(secret) != 0)
        return luaL_error(L, "cannot generate a secret: libsodium is not available");
    lua_pushlstring(L, (const char *)secret, sizeof secret);
    sodium_memzero(secret, sizeof secret);
    return 1;
}

static int l_ed25519_public(lua_State *L)
{
    const uint8_t *secret = check_key(L, 1, TUN_IDENTITY_SECRET_LEN, "secret");
    uint8_t pub[TUN_IDENTITY_PUBLIC_LEN];
    int rc = tun_identity_public(pub, secret);
    if (rc != 0)
        return fail(L, rc, "cannot derive the public key: %s", tun_strerror(rc));
    lua_pushlstring(L, (const char *)pub, sizeof pub);
    return 1;
}

static int l_endpoint_id(lua_State *L)
{
    const uint8_t *pub = check_key(L, 1, TUN_IDENTITY_PUBLIC_LEN, "public key");
    char id[TUN_ENDPOINT_ID_LEN + 1];
    tun_endpoint_id_format(id, pub);
    lua_pushstring(L, id);
    return 1;
}

static int l_parse_endpoint_id(lua_State *L)
{
    size_t len, pos = NO_POS;
    const char *s = luaL_checklstring(L, 1, &len);
    uint8_t pub[TUN_IDENTITY_PUBLIC_LEN];
    char c[16];
    int rc = tun_endpoint_id_parse(pub, s, len, &pos);
    switch (rc) {
    case 0:
        lua_pushlstring(L, (const char *)pub, sizeof pub);
        return 1;
    case TUN_ELENGTH:
        return fail(L, rc,
                    "EndpointId must be 52 base32 characters or 64 hex characters, got %d "
                    "characters",
                    (int)len);
    case TUN_EFORMAT:
        return fail(L, rc, "EndpointId has %s at position %d, which is not %s",
                    describe_char(c, (unsigned char)s[pos]), (int)pos + 1,
                    len == TUN_ENDPOINT_ID_LEN ? "base32 (a-z, 2-7)" : "a hex digit");
    case TUN_EINVAL:
        return fail(L, rc, "EndpointId must not contain '=' padding (position %d)", (int)pos + 1);
    case TUN_ERANGE:
        return fail(L, rc,
                    "EndpointId is not valid: its last character %s cannot end a 32-byte key "
                    "(a typo?)",
                    describe_char(c, (unsigned char)s[len - 1]));
    case TUN_ECRYPTO:
        return fail(L, rc, "EndpointId is not a valid Ed25519 public key (a typo?)");
    default:
        return fail(L, rc, "EndpointId is not valid: %s", tun_strerror(rc));
    }
}

/* ---- tokens --------------------------------------------------------------------------------*/

static int l_token_generate(lua_State *L)
{
    char tok[TUN_TOKEN_LEN + 1];
    if (tun_token_generate(tok) != 0)
        return luaL_error(L, "cannot generate a token: libsodium is not available");
    lua_pushlstring(L, tok, TUN_TOKEN_LEN);
    sodium_memzero(tok, sizeof tok);
    return 1;
}

static int l_token_check_char(lua_State *L)
{
    size_t len, pos = NO_POS;
    const char *body = luaL_checklstring(L, 1, &len);
    char check, c[16];
    if (tun_token_check_char(body, len, &check, &pos) != 0)
        return fail(
            L, TUN_EFORMAT,
            "token body has %s at position %d, which is not allowed (use A-Z a-z 0-9 - _ .)",
            describe_char(c, (unsigned char)body[pos]), (int)pos + 1);
    lua_pushlstring(L, &check, 1);
    return 1;
}

static int l_token_validate(lua_State *L)
{
    size_t len, pos = NO_POS;
    const char *s = luaL_checklstring(L, 1, &len);
    char c[16];
    int rc = tun_token_validate(s, len, &pos);
    switch (rc) {
    case 0:
        lua_pushboolean(L, 1);
        return 1;
    case TUN_ERANGE:
        return fail(L, rc, "token has a non-ASCII character at position %d", (int)pos + 1);
    case TUN_ELENGTH:
        return fail(L, rc, "token must be %d characters, got %d", TUN_TOKEN_LEN, (int)len);
    case TUN_EPROTO:
        return fail(L, rc, "token must start with '%c'", TUN_TOKEN_PREFIX);
    case TUN_EFORMAT:
        return fail(L, rc,
                    "token has %s at position %d, which is not allowed (use A-Z a-z 0-9 - _ .)",
                    describe_char(c, (unsigned char)s[pos]), (int)pos + 1);
    case TUN_ECHECKSUM:
        return fail(L, rc, "token checksum is invalid \xe2\x80\x94 a typo?");
    default:
        return fail(L, rc, "token is not valid: %s", tun_strerror(rc));
    }
}

/* ---- base32 / bech32 -----------------------------------------------------------------------*/

static int l_base32_encode(lua_State *L)
{
    size_t n;
    const uint8_t *in = (const uint8_t *)luaL_checklstring(L, 1, &n);
    size_t cap = tun_base32_encoded_len(n) + 1;
    char *out = lua_newuserdata(L, cap);
    int len = tun_base32_encode(out, cap, in, n);
    if (len < 0)
        return luaL_error(L, "input too large for base32");
    lua_pushlstring(L, out, (size_t)len);
    return 1;
}

static int l_base32_decode(lua_State *L)
{
    size_t len, pos = NO_POS;
    const char *s = luaL_checklstring(L, 1, &len);
    size_t cap = tun_base32_decoded_len(len);
    uint8_t *out = lua_newuserdata(L, cap ? cap : 1);
    char c[16];
    int n = tun_base32_decode(out, cap, s, len, &pos);
    switch (n) {
    case TUN_ELENGTH:
        return fail(L, n, "base32 text of %d characters cannot encode whole bytes", (int)len);
    case TUN_EFORMAT:
        return fail(L, n, "base32 text has %s at position %d, which is not base32 (a-z, 2-7)",
                    describe_char(c, (unsigned char)s[pos]), (int)pos + 1);
    case TUN_EINVAL:
        return fail(L, n, "base32 text must not contain '=' padding (position %d)", (int)pos + 1);
    case TUN_ERANGE:
        return fail(L, n, "base32 text is not canonical: its last character has unused bits set");
    default:
        if (n < 0)
            return fail(L, n, "invalid base32: %s", tun_strerror(n));
    }
    lua_pushlstring(L, (const char *)out, (size_t)n);
    return 1;
}

/* Message for a tun_bech32_decode()/_decode_bytes() error on `s`; `what` names the input. */
static int bech32_fail(lua_State *L, int rc, const char *what, const char *s, size_t len,
                       size_t pos)
{
    char c[16];
    switch (rc) {
    case TUN_ERANGE:
        if (pos != NO_POS)
            return fail(L, rc, "%s has %s at position %d, which is not allowed", what,
                        describe_char(c, (unsigned char)s[pos]), (int)pos + 1);
        return fail(L, rc, "%s has nothing before its '1' separator", what);
    case TUN_EINVAL:
        return fail(L, rc, "%s mixes upper- and lowercase letters", what);
    case TUN_ELENGTH:
        if (len > TUN_BECH32_MAX_LEN)
            return fail(L, rc, "%s is %d characters long; bech32 allows at most %d", what, (int)len,
                        TUN_BECH32_MAX_LEN);
        return fail(L, rc, "%s is too short: it needs 6 checksum characters after the '1'", what);
    case TUN_EFORMAT:
        if (pos != NO_POS)
            return fail(L, rc, "%s has %s at position %d, which is not a bech32 character", what,
                        describe_char(c, (unsigned char)s[pos]), (int)pos + 1);
        return fail(L, rc, "%s has no '1' separator", what);
    case TUN_ECHECKSUM:
        return fail(L, rc, "%s checksum is invalid \xe2\x80\x94 a typo?", what);
    case TUN_EPROTO:
        return fail(L, rc, "%s data does not decode to whole bytes", what);
    default:
        return fail(L, rc, "%s is not valid: %s", what, tun_strerror(rc));
    }
}

/* bech32_encode(hrp, bytes) -> text | nil, err, code */
static int l_bech32_encode(lua_State *L)
{
    const char *hrp = luaL_checkstring(L, 1);
    size_t n;
    const uint8_t *data = (const uint8_t *)luaL_checklstring(L, 2, &n);
    char out[TUN_BECH32_MAX_LEN + 1];
    int len = tun_bech32_encode_bytes(out, sizeof out, hrp, data, n);
    switch (len) {
    case TUN_ERANGE:
        return fail(L, len, "bech32 prefix must be 1 or more printable ASCII characters");
    case TUN_EINVAL:
        return fail(L, len, "bech32 prefix must be lowercase");
    case TUN_ELENGTH:
    case TUN_ETOOBIG:
        return fail(L, len, "%d bytes under prefix '%s' exceed bech32's %d characters", (int)n, hrp,
                    TUN_BECH32_MAX_LEN);
    default:
        if (len < 0)
            return fail(L, len, "cannot encode bech32: %s", tun_strerror(len));
    }
    lua_pushlstring(L, out, (size_t)len);
    return 1;
}

/* bech32_decode(text) -> hrp, bytes | nil, err, code */
static int l_bech32_decode(lua_State *L)
{
    size_t len, pos = NO_POS;
    const char *s = luaL_checklstring(L, 1, &len);
    char hrp[TUN_BECH32_MAX_LEN + 1];
    uint8_t out[TUN_BECH32_MAX_LEN];
    int n = tun_bech32_decode_bytes(hrp, sizeof hrp, out, sizeof out, s, len, &pos);
    if (n < 0)
        return bech32_fail(L, n, "bech32 string", s, len, pos);
    lua_pushstring(L, hrp);
    lua_pushlstring(L, (const char *)out, (size_t)n);
    return 2;
}

/* ---- Nostr keys ----------------------------------------------------------------------------*/

static int l_nostr_secret(lua_State *L)
{
    uint8_t sk[TUN_NOSTR_KEY_LEN];
    if (tun_nostr_secret_generate(sk) != 0)
        return luaL_error(L, "cannot generate a Nostr key: secp256k1 or libsodium unavailable");
    lua_pushlstring(L, (const char *)sk, sizeof sk);
    sodium_memzero(sk, sizeof sk);
    return 1;
}

static int l_nostr_public(lua_State *L)
{
    const uint8_t *sk = check_key(L, 1, TUN_NOSTR_KEY_LEN, "secret");
    uint8_t pub[TUN_NOSTR_KEY_LEN];
    int rc = tun_nostr_public(pub, sk);
    if (rc != 0)
        return fail(L, rc, "not a valid secp256k1 secret key");
    lua_pushlstring(L, (const char *)pub, sizeof pub);
    return 1;
}

static int l_nsec_encode(lua_State *L)
{
    const uint8_t *sk = check_key(L, 1, TUN_NOSTR_KEY_LEN, "secret");
    char out[TUN_NOSTR_BECH32_LEN + 1];
    tun_nostr_nsec_encode(out, sk);
    lua_pushstring(L, out);
    sodium_memzero(out, sizeof out);
    return 1;
}

static int l_npub_encode(lua_State *L)
{
    const uint8_t *pub = check_key(L, 1, TUN_NOSTR_KEY_LEN, "public key");
    char out[TUN_NOSTR_BECH32_LEN + 1];
    tun_nostr_npub_encode(out, pub);
    lua_pushstring(L, out);
    return 1;
}

/* The lowercased prefix of a bech32-looking string (up to its last '1'), for messages. */
static void prefix_of(char out[24], const char *s, size_t len)
{
    size_t sep = len;
    for (size_t i = len; i-- > 0;)
        if (s[i] == '1') {
            sep = i;
            break;
        }
    size_t n = 0;
    for (size_t i = 0; i < sep && n < 20; i++) {
        char ch = s[i];
        out[n++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    out[n] = '\0';
}

static int nostr_parse(lua_State *L, int secret)
{
    const char *kind = secret ? "nsec" : "npub";
    size_t len, pos = NO_POS;
    const char *s = luaL_checklstring(L, 1, &len);
    uint8_t key[TUN_NOSTR_KEY_LEN];
    char c[16], prefix[24];
    int rc =
        secret ? tun_nostr_nsec_parse(key, s, len, &pos) : tun_nostr_npub_parse(key, s, len, &pos);
    if (rc == 0) {
        lua_pushlstring(L, (const char *)key, sizeof key);
        sodium_memzero(key, sizeof key);
        return 1;
    }
    /* Only hex digits but not 64 of them: a truncated or padded hex key, whatever the bech32
     * decoder thinks of it (hex digits include the separator '1'). */
    size_t nhex = 0;
    while (nhex < len && hex_value((unsigned char)s[nhex]) >= 0)
        nhex++;
    if (nhex == len && len != TUN_NOSTR_HEX_LEN)
        rc = TUN_ELENGTH;
    if (len == TUN_NOSTR_HEX_LEN && rc == TUN_EFORMAT)
        return fail(L, rc, "%s has %s at position %d, which is not a hex digit", kind,
                    describe_char(c, (unsigned char)s[pos]), (int)pos + 1);
    switch (rc) {
    case TUN_ELENGTH:
        return fail(L, rc,
                    "%s must be %s1... (63 characters) or 64 hex characters, got %d characters",
                    kind, kind, (int)len);
    case TUN_EPROTO:
        prefix_of(prefix, s, len);
        if (secret && strcmp(prefix, "npub") == 0)
            return fail(L, rc, "expected a secret key (nsec1...), got a public key (npub1...)");
        if (!secret && strcmp(prefix, "nsec") == 0)
            return fail(L, rc,
                        "expected a public key (npub1...), got a secret key (nsec1...) "
                        "\xe2\x80\x94 keep that one private");
        return fail(L, rc, "expected %s1..., got a bech32 string starting with '%s1'", kind,
                    prefix);
    case TUN_ECRYPTO:
        return fail(L, rc, "%s is not a valid secp256k1 %s (a typo?)", kind,
                    secret ? "secret key" : "public key");
    case TUN_EFORMAT:
        /* The decoder also reports a well-formed last data character whose unused bits are
         * set; a character outside the charset at that spot is an ordinary bad character. */
        if (pos != NO_POS && pos + 1 + TUN_BECH32_CHECKSUM_LEN == len &&
            strchr("qpzry9x8gf2tvdw0s3jn54khce6mua7lQPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", s[pos]) &&
            s[pos] != '\0')
            return fail(L, rc, "%s is not valid: its last data character %s has unused bits set",
                        kind, describe_char(c, (unsigned char)s[pos]));
        if (pos == NO_POS)
            return fail(L, rc, "%s must be %s1... or 64 hex characters", kind, kind);
        return bech32_fail(L, rc, kind, s, len, pos);
    default:
        return bech32_fail(L, rc, kind, s, len, pos);
    }
}

static int l_parse_nsec(lua_State *L)
{
    return nostr_parse(L, 1);
}

static int l_parse_npub(lua_State *L)
{
    return nostr_parse(L, 0);
}

/* ---- base64 / hex --------------------------------------------------------------------------*/

static int l_base64_encode(lua_State *L)
{
    size_t n;
    const unsigned char *in = (const unsigned char *)luaL_checklstring(L, 1, &n);
    size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *out = lua_newuserdata(L, cap);
    sodium_bin2base64(out, cap, in, n, sodium_base64_VARIANT_ORIGINAL);
    lua_pushstring(L, out);
    return 1;
}

static int l_base64_decode(lua_State *L)
{
    size_t len, n = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    size_t cap = len / 4 * 3 + 3;
    unsigned char *out = lua_newuserdata(L, cap);
    /* Strict: each byte string has exactly one accepted text. */
    if (tun_base64_decode(out, cap, &n, s, len) != 0)
        return fail(L, TUN_EFORMAT, "not valid base64");
    lua_pushlstring(L, (const char *)out, n);
    sodium_memzero(out, cap);
    return 1;
}

static int l_hex_encode(lua_State *L)
{
    size_t n;
    const unsigned char *in = (const unsigned char *)luaL_checklstring(L, 1, &n);
    char *out = lua_newuserdata(L, n * 2 + 1);
    sodium_bin2hex(out, n * 2 + 1, in, n);
    lua_pushlstring(L, out, n * 2);
    return 1;
}

static int l_hex_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char c[16];
    for (size_t i = 0; i < len; i++)
        if (hex_value((unsigned char)s[i]) < 0)
            return fail(L, TUN_EFORMAT, "hex text has %s at position %d, which is not a hex digit",
                        describe_char(c, (unsigned char)s[i]), (int)i + 1);
    if (len % 2)
        return fail(L, TUN_ELENGTH, "hex text has an odd number of digits (%d)", (int)len);
    uint8_t *out = lua_newuserdata(L, len / 2 + 1);
    for (size_t i = 0; i < len; i += 2)
        out[i / 2] =
            (uint8_t)(hex_value((unsigned char)s[i]) << 4 | hex_value((unsigned char)s[i + 1]));
    lua_pushlstring(L, (const char *)out, len / 2);
    sodium_memzero(out, len / 2 + 1);
    return 1;
}

/* equal(a, b) -> boolean, in time that depends only on the lengths (for secrets such as
 * tokens: a byte-by-byte early exit would tell an attacker how much of a guess was right). */
static int l_equal(lua_State *L)
{
    size_t la, lb;
    const char *a = luaL_checklstring(L, 1, &la);
    const char *b = luaL_checklstring(L, 2, &lb);
    lua_pushboolean(L, la == lb && sodium_memcmp(a, b, la) == 0);
    return 1;
}

int luaopen_tunnel_core_keys(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"ed25519_secret", l_ed25519_secret},
        {"ed25519_public", l_ed25519_public},
        {"endpoint_id", l_endpoint_id},
        {"parse_endpoint_id", l_parse_endpoint_id},
        {"token_generate", l_token_generate},
        {"token_check_char", l_token_check_char},
        {"token_validate", l_token_validate},
        {"base32_encode", l_base32_encode},
        {"base32_decode", l_base32_decode},
        {"bech32_encode", l_bech32_encode},
        {"bech32_decode", l_bech32_decode},
        {"nostr_secret", l_nostr_secret},
        {"nostr_public", l_nostr_public},
        {"nsec_encode", l_nsec_encode},
        {"npub_encode", l_npub_encode},
        {"parse_nsec", l_parse_nsec},
        {"parse_npub", l_parse_npub},
        {"base64_encode", l_base64_encode},
        {"base64_decode", l_base64_decode},
        {"hex_encode", l_hex_encode},
        {"hex_decode", l_hex_decode},
        {"equal", l_equal},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_pushstring(L, TUN_TOKEN_ALPHABET);
    lua_setfield(L, -2, "TOKEN_ALPHABET");
    lua_pushinteger(L, TUN_TOKEN_LEN);
    lua_setfield(L, -2, "TOKEN_LENGTH");
    return 1;
}
