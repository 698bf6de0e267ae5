/*
 * z-base-32 (the "human-oriented" base32 by Zooko O'Whielacronx, alphabet
 * "ybndrfg8ejkmcpqxot1uwisza345h769"), without padding, most significant bits first.
 *
 * pkarr names a public key by the 52-character z-base-32 text of its 32 bytes and uses it as a
 * DNS top-level label, so the same key can appear in URLs (`/pkarr/<z32>`) and in DNS names
 * (`_tunnel.<z32>`). Our EndpointIds use the RFC 4648 alphabet instead (util/base32.h): same bit
 * packing, different characters, so the two texts of one key never look alike.
 *
 * Like util/base32 the decoder is strict: one accepted text per byte string (no padding, no
 * stray characters, zero trailing bits). Upper case is accepted because DNS names are
 * case-insensitive and resolvers may change the case of a label.
 *
 * Pure functions: no allocation, no I/O, safe on any input (fuzzed by fuzz/fuzz_pkarr.c).
 */
#ifndef TUN_UTIL_ZBASE32_H
#define TUN_UTIL_ZBASE32_H

#include <stddef.h>
#include <stdint.h>

/* Number of characters tun_zbase32_encode() produces for `n` bytes (no NUL): ceil(n * 8 / 5). */
size_t tun_zbase32_encoded_len(size_t n);

/*
 * Encode `n` bytes from `in` into `out` (lowercase), followed by a NUL. `cap` is the size of
 * `out` and must be at least tun_zbase32_encoded_len(n) + 1.
 *
 * Returns the number of characters written (excluding the NUL), or
 *   TUN_ETOOBIG  `out` is too small.
 */
int tun_zbase32_encode(char *out, size_t cap, const uint8_t *in, size_t n);

/*
 * Decode `len` characters of z-base-32 at `in` (either case; need not be NUL-terminated) into
 * `out`, whose size is `cap`.
 *
 * Returns the number of bytes written (floor(len * 5 / 8)), or
 *   TUN_ELENGTH  `len` mod 8 is 1, 3 or 6: no whole number of bytes has that length.
 *   TUN_EFORMAT  a character outside the alphabet (e.g. '0', '2', 'l', 'v', '='); `*bad_pos`
 *                is its 0-based index.
 *   TUN_ERANGE   the last character has non-zero bits beyond the encoded bytes (not canonical);
 *                `*bad_pos` is the index of the last character.
 *   TUN_ETOOBIG  `out` is too small.
 * `bad_pos` may be NULL. On error `out` may be partly written.
 */
int tun_zbase32_decode(uint8_t *out, size_t cap, const char *in, size_t len, size_t *bad_pos);

#endif
