/*
 * NIP-44 version 2: encrypted payloads between two Nostr keys.
 *
 *   conversation key = HKDF-Extract(SHA-256, salt "nip44-v2", x coordinate of ECDH(a, B))
 *   per message      = HKDF-Expand(conversation key, info = 32-byte nonce, 76 bytes)
 *                      -> ChaCha20 key (32), ChaCha20 nonce (12), HMAC key (32)
 *   padded           = u16 big-endian length || plaintext || zeros up to calc_padded_len
 *   payload          = base64(0x02 || nonce || ChaCha20(padded) || HMAC-SHA256(nonce || ct))
 *
 * The conversation key is symmetric (conv(a, B) == conv(b, A)) and should be cached per peer.
 * Plaintexts are 1..65535 bytes (the newer 6-byte length prefix for larger ones is not
 * supported: older clients reject it). Every intermediate secret is wiped.
 *
 * Depends on nostr/keys (the shared secp256k1 context), libsecp256k1 (ecdh) and libsodium.
 */
#ifndef TUN_NOSTR_NIP44_H
#define TUN_NOSTR_NIP44_H

#include "nostr/keys.h"

#include <stddef.h>
#include <stdint.h>

#define TUN_NIP44_VERSION          2
#define TUN_NIP44_KEY_LEN          32
#define TUN_NIP44_NONCE_LEN        32
#define TUN_NIP44_CHACHA_KEY_LEN   32
#define TUN_NIP44_CHACHA_NONCE_LEN 12
#define TUN_NIP44_HMAC_KEY_LEN     32
#define TUN_NIP44_MAC_LEN          32
#define TUN_NIP44_MIN_PLAINTEXT    1
#define TUN_NIP44_MAX_PLAINTEXT    65535
/* Accepted payload sizes: base64 characters and the bytes they decode to. */
#define TUN_NIP44_MIN_PAYLOAD 132
#define TUN_NIP44_MAX_PAYLOAD 87472
#define TUN_NIP44_MIN_DECODED 99
#define TUN_NIP44_MAX_DECODED 65603

/*
 * The conversation key between secret key `sk` and x-only public key `pub`.
 * Returns 0, or TUN_ECRYPTO: `sk` is zero or not below the group order, `pub` is not the x
 * coordinate of a point on the curve, or the context is unavailable.
 */
int tun_nip44_conversation_key(uint8_t conv[TUN_NIP44_KEY_LEN], const uint8_t sk[TUN_NOSTR_KEY_LEN],
                               const uint8_t pub[TUN_NOSTR_KEY_LEN]);

/*
 * The per-message keys for `nonce` under conversation key `conv`.
 * Returns 0 or TUN_ECRYPTO (libsodium unavailable).
 */
int tun_nip44_message_keys(uint8_t chacha_key[TUN_NIP44_CHACHA_KEY_LEN],
                           uint8_t chacha_nonce[TUN_NIP44_CHACHA_NONCE_LEN],
                           uint8_t hmac_key[TUN_NIP44_HMAC_KEY_LEN],
                           const uint8_t conv[TUN_NIP44_KEY_LEN],
                           const uint8_t nonce[TUN_NIP44_NONCE_LEN]);

/*
 * The padded size (without the 2-byte length prefix) of an `n`-byte plaintext: 32 up to 32
 * bytes, then multiples of 32 up to 256 and of an eighth of the next power of two above that.
 * Returns 0 for n == 0 (not a valid plaintext length).
 */
uint64_t tun_nip44_calc_padded_len(uint64_t n);

/*
 * The length in characters (no NUL) of the payload for an `n`-byte plaintext, or 0 when `n`
 * is outside TUN_NIP44_MIN_PLAINTEXT..TUN_NIP44_MAX_PLAINTEXT.
 */
size_t tun_nip44_payload_len(size_t n);

/*
 * Encrypt `n` bytes at `pt` into `out` as a base64 payload followed by a NUL. `nonce` is the
 * 32-byte message nonce; NULL draws one from the CSPRNG (pass one only to reproduce test
 * vectors: a nonce must never repeat under one conversation key).
 * Returns the payload length (tun_nip44_payload_len(n)), or
 *   TUN_ELENGTH  `n` is 0 or more than TUN_NIP44_MAX_PLAINTEXT,
 *   TUN_ETOOBIG  `cap` is less than the payload length + 1,
 *   TUN_ENOMEM   the work buffer (at most TUN_NIP44_MAX_DECODED bytes) cannot be allocated,
 *   TUN_ECRYPTO  libsodium unavailable.
 */
int tun_nip44_encrypt(char *out, size_t cap, const uint8_t conv[TUN_NIP44_KEY_LEN],
                      const uint8_t *pt, size_t n, const uint8_t nonce[TUN_NIP44_NONCE_LEN]);

/*
 * Decrypt the `len`-character payload at `payload` into `out` (no NUL is added). A plaintext
 * is never longer than len * 3 / 4 - 67 bytes, so a buffer of len * 3 / 4 always suffices.
 * Returns the plaintext length (1..TUN_NIP44_MAX_PLAINTEXT), or
 *   TUN_EPROTO     the payload starts with '#' (a future, non-base64 format) or its version
 *                  byte is not 2,
 *   TUN_ELENGTH    not TUN_NIP44_MIN_PAYLOAD..TUN_NIP44_MAX_PAYLOAD characters, or decodes
 *                  to a size outside TUN_NIP44_MIN_DECODED..TUN_NIP44_MAX_DECODED,
 *   TUN_EFORMAT    not padded standard base64,
 *   TUN_ECHECKSUM  the MAC does not match (wrong key, or the payload was altered),
 *   TUN_ERANGE     bad padding: the length prefix is 0 or does not fit the padded size,
 *   TUN_ETOOBIG    `cap` is smaller than the plaintext,
 *   TUN_ENOMEM     the work buffer cannot be allocated,
 *   TUN_ECRYPTO    libsodium unavailable.
 * `reason`, when not NULL, receives a static sentence saying what was wrong (NULL on success).
 */
int tun_nip44_decrypt(uint8_t *out, size_t cap, const uint8_t conv[TUN_NIP44_KEY_LEN],
                      const char *payload, size_t len, const char **reason);

#endif
