/*
 * Base32 (RFC 4648 section 6 alphabet) without padding.
 *
 * EndpointIds are the lowercase base32 of a 32-byte Ed25519 key, so this codec is strict: it
 * emits lowercase without '=' padding, and it accepts exactly one text for each byte string
 * (either case, no padding, no stray characters, zero trailing bits). A lenient decoder would
 * let two different strings name the same endpoint, which makes comparisons and logs confusing.
 *
 * Pure functions: no allocation, no I/O, safe on any input (fuzzed by fuzz/fuzz_codecs.c).
 */
#ifndef TUN_UTIL_BASE32_H
#define TUN_UTIL_BASE32_H

#include <stddef.h>
#include <stdint.h>

/* Number of characters tun_base32_encode() produces for `n` bytes (no NUL): ceil(n * 8 / 5). */
size_t tun_base32_encoded_len(size_t n);

/* Number of bytes a valid text of `len` characters decodes to: floor(len * 5 / 8). */
size_t tun_base32_decoded_len(size_t len);

/*
 * Encode `n` bytes from `in` as lowercase base32 into `out`, followed by a NUL.
 * `cap` is the size of `out` and must be at least tun_base32_encoded_len(n) + 1.
 *
 * Returns the number of characters written (excluding the NUL), or
 *   TUN_ETOOBIG  `out` is too small (nothing useful is written).
 */
int tun_base32_encode(char *out, size_t cap, const uint8_t *in, size_t n);

/*
 * Decode `len` characters of base32 from `in` (upper or lower case; need not be NUL-terminated)
 * into `out`, whose size is `cap`.
 *
 * Returns the number of bytes written, or one of these, each naming a different problem:
 *   TUN_ELENGTH  `len` mod 8 is 1, 3 or 6: no whole number of bytes encodes to that length.
 *   TUN_EFORMAT  a character outside the alphabet (a-z, A-Z, 2-7), e.g. '0', '1', '8', ' '.
 *   TUN_EINVAL   a '=' padding character; padding is never accepted.
 *   TUN_ERANGE   the last character carries non-zero bits beyond the encoded bytes, so the
 *                text is not the canonical encoding of any byte string (often a typo).
 *   TUN_ETOOBIG  `out` is smaller than tun_base32_decoded_len(len).
 * Character problems are reported for the first offending character, whose 0-based index is
 * stored in `*bad_pos` when `bad_pos` is not NULL (for TUN_ERANGE: the last character).
 */
int tun_base32_decode(uint8_t *out, size_t cap, const char *in, size_t len, size_t *bad_pos);

/* The 5-bit packing that base32 and z-base-32 (util/zbase32) share, for those two files:
 * encode with `alphabet`; decode text whose characters the caller has checked, `char_value`
 * mapping each to 0..31 (length, room and canonical-trailing-bits checks as above). */
int tun__base32_pack(char *out, size_t cap, const uint8_t *in, size_t n, const char alphabet[32]);
int tun__base32_unpack(uint8_t *out, size_t cap, const char *in, size_t len,
                       int (*char_value)(unsigned char), size_t *bad_pos);

#endif
