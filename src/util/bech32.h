/*
 * Bech32 as specified by BIP-173 (the original checksum constant 1, not BIP-350 bech32m), the
 * text form of Nostr keys (NIP-19: nsec1..., npub1...).
 *
 * A bech32 string is HRP + '1' + data characters + 6 checksum characters, at most 90 characters,
 * all in one case. Encoders produce lowercase. Decoders are strict and report the first
 * problem found, in this order: characters outside printable ASCII, mixed case, total length,
 * separator and HRP, data characters, checksum.
 *
 * Pure functions: no allocation, no I/O, safe on any input (fuzzed by fuzz/fuzz_codecs.c).
 */
#ifndef TUN_UTIL_BECH32_H
#define TUN_UTIL_BECH32_H

#include <stddef.h>
#include <stdint.h>

#define TUN_BECH32_MAX_LEN      90 /* whole string, BIP-173 */
#define TUN_BECH32_CHECKSUM_LEN 6
#define TUN_BECH32_MAX_HRP_LEN  83 /* 90 - separator - checksum */
#define TUN_BECH32_MAX_DATA5    82 /* 5-bit values with a 1-character HRP */

/*
 * Encode `hrp` (NUL-terminated) and `n5` 5-bit values into `out` (size `cap`), lowercase,
 * NUL-terminated.
 *
 * Returns the string length, or
 *   TUN_ERANGE   `hrp` is empty or holds a character outside ASCII 33..126.
 *   TUN_EINVAL   `hrp` holds an uppercase letter (pass it in lowercase).
 *   TUN_EFORMAT  a data value is larger than 31.
 *   TUN_ELENGTH  the result would exceed TUN_BECH32_MAX_LEN characters.
 *   TUN_ETOOBIG  `cap` is smaller than the result plus its NUL.
 */
int tun_bech32_encode(char *out, size_t cap, const char *hrp, const uint8_t *data5, size_t n5);

/*
 * Decode `len` characters from `in` (need not be NUL-terminated). The HRP, lowercased, goes to
 * `hrp` (NUL-terminated, size `hrp_cap`); the 5-bit data values without the checksum go to
 * `data5` (size `data5_cap`).
 *
 * Returns the number of data values, or
 *   TUN_ERANGE    a character outside ASCII 33..126 (`*bad_pos` = its index), or an empty HRP.
 *   TUN_EINVAL    upper- and lowercase letters are mixed.
 *   TUN_ELENGTH   more than 90 characters, or fewer than 6 characters after the separator.
 *   TUN_EFORMAT   no '1' separator, or a data character outside the bech32 charset
 *                 (`*bad_pos` = its index).
 *   TUN_ECHECKSUM the checksum does not match (a typo, or a bech32m string).
 *   TUN_ETOOBIG   `hrp_cap` or `data5_cap` is too small.
 * `bad_pos` may be NULL.
 */
int tun_bech32_decode(char *hrp, size_t hrp_cap, uint8_t *data5, size_t data5_cap, const char *in,
                      size_t len, size_t *bad_pos);

/*
 * Regroup a bit string: `n` input values of `from` bits each, big-endian, into `to`-bit values
 * (1 <= from, to <= 8). With `pad` non-zero the last group is zero-filled (encoding direction);
 * without it, leftover bits must be fewer than `from` and all zero (decoding direction).
 *
 * Returns the number of output values, or
 *   TUN_ERANGE   an input value does not fit in `from` bits.
 *   TUN_EFORMAT  (pad == 0 only) the leftover bits are too many or not zero.
 *   TUN_EINVAL   `from` or `to` is outside 1..8.
 *   TUN_ETOOBIG  `cap` is too small.
 */
int tun_bech32_convert_bits(uint8_t *out, size_t cap, const uint8_t *in, size_t n, int from, int to,
                            int pad);

/*
 * Encode bytes: tun_bech32_convert_bits(8 -> 5, padded) then tun_bech32_encode().
 * Returns the string length or an error of tun_bech32_encode() (TUN_ELENGTH when `n` is too
 * large for 90 characters).
 */
int tun_bech32_encode_bytes(char *out, size_t cap, const char *hrp, const uint8_t *bytes, size_t n);

/*
 * Decode to bytes: tun_bech32_decode() then tun_bech32_convert_bits(5 -> 8, unpadded).
 * Returns the number of bytes, an error of tun_bech32_decode(), or
 *   TUN_EPROTO   the data part does not regroup into whole bytes (padding bits set or too many).
 *   TUN_ETOOBIG  `cap` is too small.
 */
int tun_bech32_decode_bytes(char *hrp, size_t hrp_cap, uint8_t *out, size_t cap, const char *in,
                            size_t len, size_t *bad_pos);

#endif
