/*
 * Ed25519 endpoint identities.
 *
 * An identity is a 32-byte secret: the Ed25519 seed from which libsodium derives the key pair.
 * The public key is the endpoint's EndpointId. Servers keep their secret in a file so that
 * clients can dial a stable id; clients make a fresh one per run.
 *
 * EndpointId text forms:
 *   - 52 characters of lowercase RFC 4648 base32 without padding (what we print);
 *   - 64 hexadecimal characters (accepted on input, either case).
 * Parsing also checks that the 32 bytes are a usable Ed25519 public key, which catches about
 * half of all typos in an id before any network traffic.
 *
 * Depends only on util/ and libsodium; no I/O besides the CSPRNG.
 */
#ifndef TUN_IDENTITY_IDENTITY_H
#define TUN_IDENTITY_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#define TUN_IDENTITY_SECRET_LEN 32 /* Ed25519 seed */
#define TUN_IDENTITY_PUBLIC_LEN 32
#define TUN_ENDPOINT_ID_LEN     52 /* base32 text, without NUL */
#define TUN_ENDPOINT_ID_HEX_LEN 64

/*
 * Fill `secret` with 32 random bytes from the libsodium CSPRNG.
 * Returns 0, or TUN_ECRYPTO when libsodium cannot be initialised.
 */
int tun_identity_generate(uint8_t secret[TUN_IDENTITY_SECRET_LEN]);

/*
 * Derive the Ed25519 public key of `secret` (crypto_sign_seed_keypair). The expanded secret
 * key that libsodium also produces is wiped before returning.
 * Returns 0, or TUN_ECRYPTO when libsodium fails.
 */
int tun_identity_public(uint8_t pub[TUN_IDENTITY_PUBLIC_LEN],
                        const uint8_t secret[TUN_IDENTITY_SECRET_LEN]);

/*
 * Write the EndpointId text of `pub` (52 lowercase base32 characters) and a NUL into `out`.
 * Returns TUN_ENDPOINT_ID_LEN. Cannot fail.
 */
int tun_endpoint_id_format(char out[TUN_ENDPOINT_ID_LEN + 1],
                           const uint8_t pub[TUN_IDENTITY_PUBLIC_LEN]);

/*
 * Parse `len` characters at `s` (need not be NUL-terminated; no surrounding whitespace) as an
 * EndpointId, either form, into `pub`.
 *
 * Returns 0, or
 *   TUN_ELENGTH   `len` is neither 52 nor 64.
 *   TUN_EFORMAT   a character that is not base32 (52 form) or not hex (64 form);
 *                 `*bad_pos` = its 0-based index.
 *   TUN_EINVAL    (52 form) a '=' padding character; `*bad_pos` = its index.
 *   TUN_ERANGE    (52 form) the last character has non-zero unused bits (not canonical).
 *   TUN_ECRYPTO   the bytes are not a valid Ed25519 public key (not a curve point, or a point
 *                 of small order that no real key has).
 * `bad_pos` may be NULL. `pub` is only written on success.
 */
int tun_endpoint_id_parse(uint8_t pub[TUN_IDENTITY_PUBLIC_LEN], const char *s, size_t len,
                          size_t *bad_pos);

#endif
