/*
 * Authentication tokens: bearer secrets a client presents to a server.
 *
 * A token is 18 ASCII characters: the prefix 'i', a body of 16 characters drawn uniformly from
 * a 65-symbol alphabet (about 96 bits of entropy), and one check character. The check
 * character is a Luhn mod 65 digit over the body, so most typos are caught before the token
 * goes to a server: every swap of two different neighbours except 'A' with '.', and every
 * single mistyped character except one blind spot. Because 65 is odd, doubling then adding
 * base-65 digits maps indices x and x + 32 (1 <= x <= 32) to the same value, so at the eight
 * body positions weighted 2 (token positions 2, 4, ..., 16, counting the prefix as 0) a
 * character can turn into the one 32 places away ('B' <-> 'h', '0' <-> 'U') unnoticed: at
 * most 8 of the 1,088 possible single substitutions. The algorithm is kept as specified so
 * that tokens from the original tool keep validating. The check is for typos only; it adds no
 * security.
 *
 * Alphabet, in index order: A-Z (0-25), a-z (26-51), 0-9 (52-61), '-' (62), '_' (63), '.' (64).
 *
 * Luhn mod N (N = 65): walk the characters right to left, multiplying each index by a factor
 * that alternates 2, 1, 2, ... starting at the last body character; add the base-N digit sum of
 * each product (p / N + p % N). The check index is (N - sum % N) % N. A token is valid when
 * the same walk over body + check, starting with factor 1 on the check character, gives a sum
 * divisible by N.
 *
 * Pure functions except tun_token_generate(), which reads the libsodium CSPRNG.
 */
#ifndef TUN_UTIL_TOKEN_H
#define TUN_UTIL_TOKEN_H

#include <stddef.h>

#define TUN_TOKEN_LEN      18
#define TUN_TOKEN_BODY_LEN 16
#define TUN_TOKEN_PREFIX   'i'
#define TUN_TOKEN_RADIX    65
#define TUN_TOKEN_ALPHABET "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."

/* Index of `c` in the token alphabet, or -1 when `c` is not in it. */
int tun_token_char_index(int c);

/*
 * Compute the Luhn mod 65 check character over `len` body characters (any length; a real
 * token body has TUN_TOKEN_BODY_LEN) and store it in `*check`.
 *
 * Returns 0, or
 *   TUN_EFORMAT  a body character is outside the alphabet (`*bad_pos` = its 0-based index when
 *                `bad_pos` is not NULL); `*check` is untouched.
 */
int tun_token_check_char(const char *body, size_t len, char *check, size_t *bad_pos);

/*
 * Write a fresh random token and a NUL into `out` (TUN_TOKEN_LEN + 1 bytes). Body characters
 * come from randombytes_uniform(65), so each symbol is equally likely.
 *
 * Returns 0, or
 *   TUN_ECRYPTO  libsodium could not be initialised.
 */
int tun_token_generate(char out[TUN_TOKEN_LEN + 1]);

/*
 * Check `len` bytes at `s` (need not be NUL-terminated) in this order, stopping at the first
 * problem:
 *   TUN_ERANGE    a byte is not ASCII (>= 0x80)               `*bad_pos` = its index
 *   TUN_ELENGTH   `len` is not TUN_TOKEN_LEN
 *   TUN_EPROTO    the first character is not TUN_TOKEN_PREFIX
 *   TUN_EFORMAT   a character is outside the alphabet          `*bad_pos` = its index
 *   TUN_ECHECKSUM the check character does not match the body (a typo)
 * Returns 0 for a valid token. `bad_pos` may be NULL. The comparison is not constant-time:
 * only the format is checked here; servers compare tokens elsewhere.
 */
int tun_token_validate(const char *s, size_t len, size_t *bad_pos);

#endif
