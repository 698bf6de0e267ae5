/*
 * tunnel.core.nostr: NIP-01 events (serialization, id, signing, verification) and NIP-44 v2
 * encryption, for Lua.
 *
 * Events are plain tables with the NIP-01 field names: pubkey/id/sig as lowercase hex,
 * created_at and kind as integral numbers, tags as an array of arrays of strings, content as a
 * string. Tables are read with raw access only, so a metatable on a decoded table cannot run
 * code in the middle of a verification. Keys, nonces and conversation keys are binary strings
 * of 32 bytes, as in tunnel.core.keys.
 *
 * serialize/event_id/sign treat a malformed event as a programming error and raise; verify
 * reads events off the network and reports every problem with its fields as nil, reason.
 * NIP-44 failures return nil, message, code (code from tun_err_name()).
 */
#include "lua/modules.h"

#include "nostr/event.h"
#include "nostr/keys.h"
#include "nostr/nip44.h"
#include "util/error.h"

#include <lauxlib.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define ERR_LEN 160

/* 2^53 - 1: the largest integer a Lua number (a double) holds exactly. */
#define MAX_SAFE_INT 9007199254740991.0

/* A string argument of exactly `n` bytes. */
static const uint8_t *check_bytes(lua_State *L, int idx, size_t n, const char *what)
{
    size_t len;
    const char *s = luaL_checklstring(L, idx, &len);
    if (len != n)
        luaL_argerror(L, idx,
                      lua_pushfstring(L, "%s must be %d bytes, got %d", what, (int)n, (int)len));
    return (const uint8_t *)s;
}

/* nil, message, code. */
static int fail(lua_State *L, int code, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, tun_err_name(code));
    return 3;
}

/* ---- reading an event table ----------------------------------------------------------------*/

#define WANT_PUBKEY 1 /* pubkey is read (serialize, event_id, verify; sign derives it) */
#define WANT_ID_SIG 2 /* id and sig are read (verify) */

/* Push t[name] (raw) and return its type. */
static int field(lua_State *L, int t, const char *name)
{
    lua_pushstring(L, name);
    lua_rawget(L, t);
    return lua_type(L, -1);
}

static int is_lower_hex(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int read_hex(lua_State *L, int t, const char *name, uint8_t *out, size_t n, char *err)
{
    int type = field(L, t, name);
    size_t len = 0;
    const char *s = type == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    int ok = s && len == 2 * n && is_lower_hex(s, len) &&
             sodium_hex2bin(out, n, s, len, NULL, NULL, NULL) == 0;
    lua_pop(L, 1);
    if (type == LUA_TNIL)
        snprintf(err, ERR_LEN, "field %s missing", name);
    else if (!ok)
        snprintf(err, ERR_LEN, "field %s invalid: must be %d lowercase hex characters", name,
                 (int)(2 * n));
    return ok ? 0 : -1;
}

static int read_int(lua_State *L, int t, const char *name, double max, int64_t *out, char *err)
{
    int type = field(L, t, name);
    lua_Number v = type == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
    lua_pop(L, 1);
    /* NaN fails every comparison, so it lands in the error branch too. */
    if (type == LUA_TNUMBER && v >= 0 && v <= max && v == (lua_Number)(int64_t)v) {
        *out = (int64_t)v;
        return 0;
    }
    if (type == LUA_TNIL)
        snprintf(err, ERR_LEN, "field %s missing", name);
    else
        snprintf(err, ERR_LEN, "field %s invalid: must be an integer from 0 to %.0f", name, max);
    return -1;
}

/* The number of entries of the table at absolute index t, or -1 when it is not a sequence
 * 1..n (a JSON object, or an array with holes or extra keys). */
static long sequence_len(lua_State *L, int t)
{
    size_t n = lua_objlen(L, t), keys = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        keys++;
    }
    return keys == n ? (long)n : -1;
}

/*
 * Read tags (t.tags) into a userdata left on the stack, pointed to by ev->tags. Two passes:
 * the first checks and counts, the second fills, so one allocation holds every tag and value.
 * The value pointers stay valid because the strings are still referenced by the tag tables.
 */
static int read_tags(lua_State *L, int t, struct tun_nostr_event *ev, char *err)
{
    int type = field(L, t, "tags");
    int tags = lua_gettop(L);
    if (type != LUA_TTABLE) {
        lua_pop(L, 1);
        if (type == LUA_TNIL)
            snprintf(err, ERR_LEN, "field tags missing");
        else
            snprintf(err, ERR_LEN, "field tags invalid: must be an array of arrays of strings");
        return -1;
    }
    long ntags = sequence_len(L, tags);
    if (ntags < 0 || ntags > TUN_NOSTR_MAX_TAGS) {
        lua_pop(L, 1);
        snprintf(err, ERR_LEN, "field tags invalid: must be an array of at most %d tags",
                 TUN_NOSTR_MAX_TAGS);
        return -1;
    }
    size_t nvalues = 0;
    for (long i = 1; i <= ntags; i++) {
        lua_rawgeti(L, tags, (int)i);
        int tag = lua_gettop(L);
        long n = lua_type(L, tag) == LUA_TTABLE ? sequence_len(L, tag) : -1;
        if (n < 0 || n > TUN_NOSTR_MAX_TAG_VALUES) {
            lua_pop(L, 2);
            snprintf(err, ERR_LEN,
                     "field tags invalid: tag %ld must be an array of at most %d strings", i,
                     TUN_NOSTR_MAX_TAG_VALUES);
            return -1;
        }
        for (long j = 1; j <= n; j++) {
            lua_rawgeti(L, tag, (int)j);
            int is_string = lua_type(L, -1) == LUA_TSTRING;
            lua_pop(L, 1);
            if (!is_string) {
                lua_pop(L, 2);
                snprintf(err, ERR_LEN, "field tags invalid: tag %ld value %ld is not a string", i,
                         j);
                return -1;
            }
        }
        nvalues += (size_t)n;
        lua_pop(L, 1);
    }

    size_t size =
        (size_t)ntags * sizeof(struct tun_nostr_tag) + nvalues * sizeof(struct tun_nostr_str);
    struct tun_nostr_tag *tv = lua_newuserdata(L, size ? size : 1);
    struct tun_nostr_str *sv = (struct tun_nostr_str *)(tv + ntags);
    lua_insert(L, tags); /* below the tags table, which is popped now */
    tags++;
    for (long i = 1; i <= ntags; i++) {
        lua_rawgeti(L, tags, (int)i);
        size_t n = lua_objlen(L, -1);
        tv[i - 1].values = sv;
        tv[i - 1].n = n;
        for (size_t j = 1; j <= n; j++) {
            lua_rawgeti(L, -1, (int)j);
            sv->p = lua_tolstring(L, -1, &sv->len);
            sv++;
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    ev->tags = tv;
    ev->ntags = (size_t)ntags;
    return 0;
}

/*
 * Read the event table at index t into *ev. Returns 0, or -1 with a message in `err` ("field
 * kind missing", "field tags invalid: ..."). On success a userdata holding the tags is left on
 * the stack; keep it there while ev is in use.
 */
static int read_event(lua_State *L, int t, struct tun_nostr_event *ev, int want, char *err)
{
    memset(ev, 0, sizeof *ev);
    t = t < 0 ? lua_gettop(L) + t + 1 : t;
    int top = lua_gettop(L);
    if ((want & WANT_PUBKEY) && read_hex(L, t, "pubkey", ev->pubkey, TUN_NOSTR_KEY_LEN, err) != 0)
        return -1;
    if (read_int(L, t, "created_at", MAX_SAFE_INT, &ev->created_at, err) != 0 ||
        read_int(L, t, "kind", TUN_NOSTR_MAX_KIND, &ev->kind, err) != 0)
        return -1;
    int type = field(L, t, "content");
    if (type != LUA_TSTRING) {
        lua_pop(L, 1);
        snprintf(err, ERR_LEN,
                 type == LUA_TNIL ? "field content missing"
                                  : "field content invalid: must be a string");
        return -1;
    }
    ev->content.p = lua_tolstring(L, -1, &ev->content.len);
    lua_pop(L, 1);
    if ((want & WANT_ID_SIG) && (read_hex(L, t, "id", ev->id, TUN_NOSTR_ID_LEN, err) != 0 ||
                                 read_hex(L, t, "sig", ev->sig, TUN_NOSTR_SIG_LEN, err) != 0))
        return -1;
    if (read_tags(L, t, ev, err) != 0) {
        lua_settop(L, top);
        return -1;
    }
    return 0;
}

/* Read an event argument that must be well-formed; raise otherwise. */
static void check_event(lua_State *L, int idx, struct tun_nostr_event *ev, int want)
{
    char err[ERR_LEN];
    luaL_checktype(L, idx, LUA_TTABLE);
    if (read_event(L, idx, ev, want, err) != 0)
        luaL_argerror(L, idx, err);
    int rc = tun_nostr_event_check(ev);
    if (rc == TUN_ETOOBIG)
        luaL_argerror(L, idx,
                      lua_pushfstring(L, "event is too large: its serialization exceeds %d bytes",
                                      TUN_NOSTR_MAX_EVENT_LEN));
    else if (rc < 0)
        luaL_argerror(L, idx, tun_strerror(rc));
}

static void push_hex(lua_State *L, const uint8_t *b, size_t n)
{
    char hex[2 * TUN_NOSTR_SIG_LEN + 1];
    sodium_bin2hex(hex, sizeof hex, b, n);
    lua_pushlstring(L, hex, 2 * n);
}

/* ---- NIP-01 --------------------------------------------------------------------------------*/

static int l_serialize(lua_State *L)
{
    lua_settop(L, 1); /* the tags userdata goes to index 2 */
    struct tun_nostr_event ev;
    check_event(L, 1, &ev, WANT_PUBKEY);
    int len = tun_nostr_event_serialized_len(&ev);
    char *out = lua_newuserdata(L, (size_t)len + 1);
    if (tun_nostr_event_serialize(out, (size_t)len + 1, &ev) != len)
        return luaL_error(L, "cannot serialize the event"); /* measured just above: unreachable */
    lua_pushlstring(L, out, (size_t)len);
    return 1;
}

static int l_event_id(lua_State *L)
{
    lua_settop(L, 1);
    struct tun_nostr_event ev;
    check_event(L, 1, &ev, WANT_PUBKEY);
    uint8_t id[TUN_NOSTR_ID_LEN];
    if (tun_nostr_event_id(id, &ev) != 0)
        return luaL_error(L, "cannot hash the event: libsodium is not available");
    push_hex(L, id, sizeof id);
    return 1;
}

static void set_hex(lua_State *L, int t, const char *name, const uint8_t *b, size_t n)
{
    lua_pushstring(L, name);
    push_hex(L, b, n);
    lua_rawset(L, t);
}

static int l_sign(lua_State *L)
{
    lua_settop(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    const uint8_t *sk = check_bytes(L, 2, TUN_NOSTR_KEY_LEN, "secret");
    if (tun_nostr_secret_check(sk) != 0)
        return luaL_argerror(L, 2, "secret is not a valid secp256k1 secret key");
    struct tun_nostr_event ev;
    check_event(L, 1, &ev, 0);
    if (tun_nostr_event_sign(&ev, sk) != 0)
        return luaL_error(L, "cannot sign the event: secp256k1 or libsodium unavailable");
    set_hex(L, 1, "pubkey", ev.pubkey, sizeof ev.pubkey);
    set_hex(L, 1, "id", ev.id, sizeof ev.id);
    set_hex(L, 1, "sig", ev.sig, sizeof ev.sig);
    lua_pushvalue(L, 1);
    return 1;
}

static int l_verify(lua_State *L)
{
    lua_settop(L, 1);
    luaL_checktype(L, 1, LUA_TTABLE);
    struct tun_nostr_event ev;
    char err[ERR_LEN];
    if (read_event(L, 1, &ev, WANT_PUBKEY | WANT_ID_SIG, err) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    int rc = tun_nostr_event_verify(&ev);
    const char *why;
    switch (rc) {
    case 0:
        lua_pushboolean(L, 1);
        return 1;
    case TUN_ECHECKSUM:
        why = "id does not match the content";
        break;
    case TUN_ECRYPTO:
        why = "bad signature";
        break;
    case TUN_EFORMAT:
        why = "pubkey is not a valid key";
        break;
    case TUN_ETOOBIG:
        lua_pushnil(L);
        lua_pushfstring(L, "event is too large: its serialization exceeds %d bytes",
                        TUN_NOSTR_MAX_EVENT_LEN);
        return 2;
    default:
        why = tun_strerror(rc);
        break;
    }
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* ---- NIP-44 --------------------------------------------------------------------------------*/

static int l_conversation_key(lua_State *L)
{
    const uint8_t *sk = check_bytes(L, 1, TUN_NOSTR_KEY_LEN, "secret");
    const uint8_t *pub = check_bytes(L, 2, TUN_NOSTR_KEY_LEN, "public key");
    if (tun_nostr_secret_check(sk) != 0)
        return fail(L, TUN_ECRYPTO,
                    "secret key is not valid: it must be non-zero and below the curve order");
    if (tun_nostr_public_check(pub) != 0)
        return fail(L, TUN_ECRYPTO, "public key is not valid: not a point on the curve");
    uint8_t conv[TUN_NIP44_KEY_LEN];
    int rc = tun_nip44_conversation_key(conv, sk, pub);
    if (rc != 0)
        return fail(L, rc, "cannot compute the conversation key");
    lua_pushlstring(L, (const char *)conv, sizeof conv);
    sodium_memzero(conv, sizeof conv);
    return 1;
}

static int l_message_keys(lua_State *L)
{
    const uint8_t *conv = check_bytes(L, 1, TUN_NIP44_KEY_LEN, "conversation key");
    const uint8_t *nonce = check_bytes(L, 2, TUN_NIP44_NONCE_LEN, "nonce");
    uint8_t ck[TUN_NIP44_CHACHA_KEY_LEN], cn[TUN_NIP44_CHACHA_NONCE_LEN],
        hk[TUN_NIP44_HMAC_KEY_LEN];
    if (tun_nip44_message_keys(ck, cn, hk, conv, nonce) != 0)
        return luaL_error(L, "cannot derive message keys: libsodium is not available");
    lua_pushlstring(L, (const char *)ck, sizeof ck);
    lua_pushlstring(L, (const char *)cn, sizeof cn);
    lua_pushlstring(L, (const char *)hk, sizeof hk);
    sodium_memzero(ck, sizeof ck);
    sodium_memzero(cn, sizeof cn);
    sodium_memzero(hk, sizeof hk);
    return 3;
}

static int l_calc_padded_len(lua_State *L)
{
    lua_Number n = luaL_checknumber(L, 1);
    if (!(n >= 1 && n <= 4294967296.0 && n == (lua_Number)(int64_t)n))
        return luaL_argerror(L, 1, "length must be an integer from 1 to 2^32");
    lua_pushnumber(L, (lua_Number)tun_nip44_calc_padded_len((uint64_t)n));
    return 1;
}

static int l_encrypt(lua_State *L)
{
    const uint8_t *conv = check_bytes(L, 1, TUN_NIP44_KEY_LEN, "conversation key");
    size_t n;
    const uint8_t *pt = (const uint8_t *)luaL_checklstring(L, 2, &n);
    const uint8_t *nonce =
        lua_isnoneornil(L, 3) ? NULL : check_bytes(L, 3, TUN_NIP44_NONCE_LEN, "nonce");
    size_t len = tun_nip44_payload_len(n);
    if (!len) {
        char msg[96];
        snprintf(msg, sizeof msg, "plaintext must be 1 to %d bytes, got %lu",
                 TUN_NIP44_MAX_PLAINTEXT, (unsigned long)n);
        return fail(L, TUN_ELENGTH, msg);
    }
    char *out = lua_newuserdata(L, len + 1);
    int rc = tun_nip44_encrypt(out, len + 1, conv, pt, n, nonce);
    if (rc < 0)
        return fail(L, rc, rc == TUN_ENOMEM ? "out of memory" : "encryption failed");
    lua_pushlstring(L, out, (size_t)rc);
    return 1;
}

static int l_decrypt(lua_State *L)
{
    const uint8_t *conv = check_bytes(L, 1, TUN_NIP44_KEY_LEN, "conversation key");
    size_t len;
    const char *payload = luaL_checklstring(L, 2, &len);
    /* Too-long payloads are refused before anything is allocated for them. */
    size_t cap = len <= TUN_NIP44_MAX_PAYLOAD ? len / 4 * 3 : 0;
    uint8_t *out = cap ? lua_newuserdata(L, cap) : NULL;
    const char *why = NULL;
    int rc = tun_nip44_decrypt(out, cap, conv, payload, len, &why);
    if (rc < 0)
        return fail(L, rc, why ? why : tun_strerror(rc));
    lua_pushlstring(L, (const char *)out, (size_t)rc);
    sodium_memzero(out, cap);
    return 1;
}

static int l_sha256(lua_State *L)
{
    size_t n;
    const unsigned char *in = (const unsigned char *)luaL_checklstring(L, 1, &n);
    unsigned char h[crypto_hash_sha256_BYTES];
    if (sodium_init() < 0 || crypto_hash_sha256(h, in, n) != 0)
        return luaL_error(L, "cannot hash: libsodium is not available");
    lua_pushlstring(L, (const char *)h, sizeof h);
    return 1;
}

int luaopen_tunnel_core_nostr(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"serialize", l_serialize},
        {"event_id", l_event_id},
        {"sign", l_sign},
        {"verify", l_verify},
        {"conversation_key", l_conversation_key},
        {"message_keys", l_message_keys},
        {"calc_padded_len", l_calc_padded_len},
        {"encrypt", l_encrypt},
        {"decrypt", l_decrypt},
        {"sha256", l_sha256},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
