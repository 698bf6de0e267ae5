#include "quic/tls.h"
#include "util/error.h"
#include "util/log.h"

#include <gnutls/abstract.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* AES-128-GCM first: with AES-NI it is an order of magnitude faster than GnuTLS's ChaCha20
 * here. Only raw public keys are acceptable certificate types, for both sides. */
#define PRIORITY                                                                                   \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305:"      \
    "-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1:%DISABLE_TLS13_COMPAT_MODE:"                        \
    "-CTYPE-ALL:+CTYPE-SRV-RAWPK:+CTYPE-CLI-RAWPK"

struct tun_tls_ctx {
    gnutls_certificate_credentials_t cred;
    int is_server;
    char alpn[32];
};

/* Every session maps its connection to its peer state the same way. */
static tun_tls_peer_fn peer_of;

/* Import our Ed25519 key pair into GnuTLS from the libsodium-style seed. */
static int import_identity(const uint8_t secret[32], gnutls_privkey_t *priv, gnutls_pcert_st **pc)
{
    uint8_t pk[32], sk[64];
    if (crypto_sign_seed_keypair(pk, sk, secret) != 0)
        return TUN_ECRYPTO;
    gnutls_datum_t x = {pk, 32}, k = {(unsigned char *)secret, 32};
    gnutls_pubkey_t pub = NULL;
    int rc = gnutls_privkey_init(priv);
    if (rc == 0)
        rc = gnutls_privkey_import_ecc_raw(*priv, GNUTLS_ECC_CURVE_ED25519, &x, NULL, &k);
    if (rc == 0)
        rc = gnutls_pubkey_init(&pub);
    if (rc == 0)
        rc = gnutls_pubkey_import_privkey(pub, *priv, 0, 0);
    if (rc == 0) {
        *pc = gnutls_malloc(sizeof(**pc));
        rc = *pc ? gnutls_pcert_import_rawpk(*pc, pub, 0) : GNUTLS_E_MEMORY_ERROR;
        if (rc != 0 && *pc) {
            gnutls_free(*pc);
            *pc = NULL;
        }
    }
    memset(sk, 0, sizeof(sk));
    if (rc != 0) {
        if (pub)
            gnutls_pubkey_deinit(pub);
        gnutls_privkey_deinit(*priv);
        *priv = NULL;
        tun_log_error(QUIC, "cannot load identity into GnuTLS: %s", gnutls_strerror(rc));
        return TUN_ECRYPTO;
    }
    /* gnutls_pcert_import_rawpk took ownership of `pub`. */
    return 0;
}

/* Check the peer's raw public key. The client pins the server's EndpointId; the server records
 * the client's key. A certificate of any other type is refused: GnuTLS would otherwise quietly
 * fall back to X.509 when one side lacks raw-key support. */
static int verify_peer(gnutls_session_t s)
{
    /* The verify function is shared by every session of the credentials; the per-session
     * state is reached through the connection that owns the session. */
    ngtcp2_crypto_conn_ref *ref = gnutls_session_get_ptr(s);
    struct tun_tls_peer *peer = ref && peer_of ? peer_of(ref->user_data) : NULL;
    if (!peer)
        return GNUTLS_E_CERTIFICATE_ERROR;
    gnutls_certificate_type_t t = gnutls_certificate_type_get2(s, GNUTLS_CTYPE_PEERS);
    if (t != GNUTLS_CRT_RAWPK) {
        peer->wrong_type = 1;
        return GNUTLS_E_CERTIFICATE_ERROR;
    }
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(s, &n);
    if (!certs || n < 1)
        return GNUTLS_E_CERTIFICATE_ERROR;
    gnutls_pubkey_t pub;
    if (gnutls_pubkey_init(&pub) != 0)
        return GNUTLS_E_CERTIFICATE_ERROR;
    int rc = gnutls_pubkey_import(pub, &certs[0], GNUTLS_X509_FMT_DER);
    gnutls_ecc_curve_t curve = GNUTLS_ECC_CURVE_INVALID;
    gnutls_datum_t x = {NULL, 0};
    if (rc == 0)
        rc = gnutls_pubkey_export_ecc_raw2(pub, &curve, &x, NULL, 0);
    gnutls_pubkey_deinit(pub);
    if (rc != 0 || curve != GNUTLS_ECC_CURVE_ED25519 || x.size != 32) {
        gnutls_free(x.data);
        peer->wrong_type = 1;
        return GNUTLS_E_CERTIFICATE_ERROR;
    }
    memcpy(peer->key, x.data, 32);
    peer->have_key = 1;
    gnutls_free(x.data);
    if (peer->pin && memcmp(peer->key, peer->expected, 32) != 0) {
        peer->mismatch = 1;
        return GNUTLS_E_CERTIFICATE_ERROR;
    }
    return 0;
}

int tun_tls_ctx_new(const uint8_t secret[32], int is_server, const char *alpn,
                    struct tun_tls_ctx **out)
{
    struct tun_tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return TUN_ENOMEM;
    ctx->is_server = is_server;
    snprintf(ctx->alpn, sizeof(ctx->alpn), "%s", alpn);
    if (gnutls_certificate_allocate_credentials(&ctx->cred) != 0) {
        free(ctx);
        return TUN_ENOMEM;
    }
    gnutls_privkey_t priv = NULL;
    gnutls_pcert_st *pc = NULL;
    int rc = import_identity(secret, &priv, &pc);
    if (rc == 0) {
        if (gnutls_certificate_set_key(ctx->cred, NULL, 0, pc, 1, priv) != 0) {
            gnutls_pcert_deinit(pc);
            gnutls_privkey_deinit(priv);
            rc = TUN_ECRYPTO;
        }
        /* The credentials copied the pcert structure (and own what it points to); the array
         * itself is still ours. */
        gnutls_free(pc);
    }
    if (rc != 0) {
        gnutls_certificate_free_credentials(ctx->cred);
        free(ctx);
        return rc;
    }
    gnutls_certificate_set_verify_function(ctx->cred, verify_peer);
    *out = ctx;
    return 0;
}

void tun_tls_ctx_free(struct tun_tls_ctx *ctx)
{
    if (!ctx)
        return;
    gnutls_certificate_free_credentials(ctx->cred);
    free(ctx);
}

int tun_tls_session_new(struct tun_tls_ctx *ctx, void *conn_ref, tun_tls_peer_fn peer_fn,
                        gnutls_session_t *out)
{
    gnutls_session_t s;
    unsigned flags = (ctx->is_server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_ENABLE_RAWPK |
                     GNUTLS_NO_END_OF_EARLY_DATA;
    if (ctx->is_server)
        flags |= GNUTLS_NO_AUTO_SEND_TICKET;
    if (gnutls_init(&s, flags) != 0)
        return TUN_ENOMEM;
    peer_of = peer_fn;
    const char *err = NULL;
    int rc = gnutls_priority_set_direct(s, PRIORITY, &err);
    if (rc == 0)
        rc = ctx->is_server ? ngtcp2_crypto_gnutls_configure_server_session(s)
                            : ngtcp2_crypto_gnutls_configure_client_session(s);
    if (rc == 0)
        rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, ctx->cred);
    if (rc == 0) {
        gnutls_datum_t alpn = {(unsigned char *)ctx->alpn, (unsigned)strlen(ctx->alpn)};
        rc = gnutls_alpn_set_protocols(s, &alpn, 1,
                                       GNUTLS_ALPN_MANDATORY |
                                           (ctx->is_server ? GNUTLS_ALPN_SERVER_PRECEDENCE : 0));
    }
    if (rc != 0) {
        tun_log_error(QUIC, "TLS session setup failed: %s%s%s", gnutls_strerror(rc),
                      err ? " near " : "", err ? err : "");
        gnutls_deinit(s);
        return TUN_ECRYPTO;
    }
    if (ctx->is_server)
        gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
    gnutls_session_set_ptr(s, conn_ref);
    *out = s;
    return 0;
}

const char *tun_tls_describe(gnutls_session_t s, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s %s %s", gnutls_protocol_get_name(gnutls_protocol_get_version(s)),
             gnutls_cipher_get_name(gnutls_cipher_get(s)),
             gnutls_group_get_name(gnutls_group_get(s)));
    return buf;
}
