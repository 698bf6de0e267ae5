/*
 * Strict base64 (RFC 4648 standard alphabet, '=' padding) decoding: one accepted text per byte
 * string. libsodium 1.0.18's decoder alone is not enough: it reads every byte from 0x80 up as
 * '/', so many texts would decode to the same bytes (found by fuzz/fuzz_nostr.c).
 */
#ifndef TUN_UTIL_BASE64_H
#define TUN_UTIL_BASE64_H

#include <stddef.h>
#include <stdint.h>

/*
 * Decode all `len` characters at `s` into `out` (room for `cap` bytes); the length goes to
 * `*out_len`. Padding must be present and canonical (unused bits zero); no whitespace.
 * Returns 0, TUN_EFORMAT (not strict base64) or TUN_ELENGTH (`out` too small).
 */
int tun_base64_decode(uint8_t *out, size_t cap, size_t *out_len, const char *s, size_t len);

#endif
