/*
 * Nostr keys: secp256k1 secret keys and BIP-340 x-only public keys, with their NIP-19 text
 * forms (bech32 "nsec1..." / "npub1...", 63 characters) and plain 64-character hex.
 *
 * All secp256k1 calls share one context, created on first use and randomized (blinding against
 * side channels). The context is process-wide and not thread-safe to create; call these
 * functions from the event-loop thread.
 *
 * Depends on util/ (bech32), libsecp256k1 0.2.0 and libsodium (CSPRNG).
 */
#ifndef TUN_NOSTR_KEYS_H
#define TUN_NOSTR_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include <secp256k1.h>

#define TUN_NOSTR_KEY_LEN    32
#define TUN_NOSTR_BECH32_LEN 63 /* "nsec1"/"npub1" + 52 data + 6 checksum, without NUL */
#define TUN_NOSTR_HEX_LEN    64
#define TUN_NOSTR_NSEC_HRP   "nsec"
#define TUN_NOSTR_NPUB_HRP   "npub"

/* The shared context, or NULL when it cannot be created (out of memory, or no randomness). */
const secp256k1_context *tun_nostr_context(void);

/*
 * Check that `sk` is a usable secret key: not zero and below the group order.
 * Returns 0 or TUN_ECRYPTO.
 */
int tun_nostr_secret_check(const uint8_t sk[TUN_NOSTR_KEY_LEN]);

/*
 * Fill `sk` with a fresh random secret key (CSPRNG bytes, redrawn in the astronomically rare
 * case that they are not a valid key).
 * Returns 0, or TUN_ECRYPTO when libsodium or the context is unavailable.
 */
int tun_nostr_secret_generate(uint8_t sk[TUN_NOSTR_KEY_LEN]);

/*
 * Derive the 32-byte x-only public key of `sk` (what NIP-01 events carry as "pubkey").
 * Returns 0, or TUN_ECRYPTO when `sk` is not a valid secret key or the context is unavailable.
 */
int tun_nostr_public(uint8_t pub[TUN_NOSTR_KEY_LEN], const uint8_t sk[TUN_NOSTR_KEY_LEN]);

/*
 * Check that `pub` is the x coordinate of a point on the curve.
 * Returns 0 or TUN_ECRYPTO.
 */
int tun_nostr_public_check(const uint8_t pub[TUN_NOSTR_KEY_LEN]);

/*
 * Write "nsec1..." / "npub1..." (TUN_NOSTR_BECH32_LEN characters) and a NUL into `out`.
 * Return TUN_NOSTR_BECH32_LEN. They encode any 32 bytes; validity is the caller's business.
 */
int tun_nostr_nsec_encode(char out[TUN_NOSTR_BECH32_LEN + 1], const uint8_t sk[TUN_NOSTR_KEY_LEN]);
int tun_nostr_npub_encode(char out[TUN_NOSTR_BECH32_LEN + 1], const uint8_t pub[TUN_NOSTR_KEY_LEN]);

/*
 * Parse `len` characters at `s` (no surrounding whitespace) as a secret key ("nsec1..." or 64
 * hex) / a public key ("npub1..." or 64 hex). A 64-character input is read as hex; anything
 * else as bech32.
 *
 * Returns 0 (the key is written only then), or
 *   TUN_ELENGTH   not 64 characters and not a bech32 string carrying 32 bytes.
 *   TUN_EFORMAT   a non-hex character (hex form), no '1' separator, a character outside the
 *                 bech32 charset, or non-zero unused bits in the last data character;
 *                 `*bad_pos` = the offending index when there is one (else untouched).
 *   TUN_ERANGE    (bech32) a character outside ASCII 33..126 (`*bad_pos`), or an empty HRP.
 *   TUN_EINVAL    (bech32) upper- and lowercase letters are mixed.
 *   TUN_ECHECKSUM (bech32) the checksum does not match (a typo).
 *   TUN_EPROTO    (bech32) a valid string with another prefix (e.g. an npub given as nsec).
 *   TUN_ECRYPTO   the 32 bytes are not a valid secret key / not a point on the curve.
 * `bad_pos` may be NULL.
 */
int tun_nostr_nsec_parse(uint8_t sk[TUN_NOSTR_KEY_LEN], const char *s, size_t len, size_t *bad_pos);
int tun_nostr_npub_parse(uint8_t pub[TUN_NOSTR_KEY_LEN], const char *s, size_t len,
                         size_t *bad_pos);

#endif
