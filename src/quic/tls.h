/*
 * TLS 1.3 for QUIC with RFC 7250 raw Ed25519 public keys (GnuTLS).
 *
 * Both sides present a raw key: the server's is its EndpointId, which the client pins; the
 * client's identifies it (fresh per run unless configured). No certificates, no CAs.
 */
#ifndef TUN_QUIC_TLS_H
#define TUN_QUIC_TLS_H

#include <gnutls/gnutls.h>
#include <stdint.h>

#define TUN_ALPN_TUNNEL "tunnel/1"

/* Per-connection identity state the verify callback fills in. */
struct tun_tls_peer {
    uint8_t expected[32]; /* the key to pin (client side) */
    int pin;              /* compare against `expected` */
    uint8_t key[32];      /* the key the peer presented */
    int have_key;
    int mismatch; /* the peer presented another key than `expected` */
    int wrong_type;
};

struct tun_tls_ctx;

/* Credentials for one endpoint from its 32-byte Ed25519 secret (seed). `alpn` is the one
 * protocol offered or accepted. Returns 0, TUN_ECRYPTO or TUN_ENOMEM. */
int tun_tls_ctx_new(const uint8_t secret[32], int is_server, const char *alpn,
                    struct tun_tls_ctx **out);
void tun_tls_ctx_free(struct tun_tls_ctx *ctx);

/* A session for one QUIC connection. `conn_ref` must point at the connection's
 * ngtcp2_crypto_conn_ref (GnuTLS's session pointer belongs to ngtcp2's crypto layer), and
 * `peer_of(conn_ref->user_data)` must return that connection's tun_tls_peer. */
typedef struct tun_tls_peer *(*tun_tls_peer_fn)(void *user_data);
int tun_tls_session_new(struct tun_tls_ctx *ctx, void *conn_ref, tun_tls_peer_fn peer_of,
                        gnutls_session_t *out);

/* The negotiated cipher and key exchange, e.g. "TLS1.3 AES-128-GCM X25519". */
const char *tun_tls_describe(gnutls_session_t s, char *buf, size_t cap);

#endif
