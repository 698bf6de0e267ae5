/*
 * A server-side byte stream over an accepted TCP connection, plain or TLS (GnuTLS, X.509
 * certificate), on the libuv loop: what the relay's HTTP/WebSocket server reads and writes.
 *
 * TLS runs over libuv with GnuTLS's custom transport: ciphertext from the socket is queued
 * for GnuTLS's pull function, and what GnuTLS pushes is gathered and written with one
 * uv_write per call. The caller sees plaintext only, in the same callbacks for both cases.
 *
 * Memory is bounded: reading stops while more than `read_limit` bytes of plaintext wait for
 * the caller (tun_wstream_consume), and tun_wstream_write refuses (TUN_EAGAIN) once more than
 * `write_limit` bytes are queued for the socket; on_drain says when there is room again.
 *
 * Threading: none; one loop.
 */
#ifndef TUN_WEB_STREAM_H
#define TUN_WEB_STREAM_H

#include <gnutls/gnutls.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct tun_wstream;

struct tun_wstream_cbs {
    /* TLS handshake finished (plain streams: never called; data may arrive at once). */
    void (*on_ready)(struct tun_wstream *s, void *ud);
    /* Plaintext arrived. `data`/`len` is everything buffered and not yet consumed; call
     * tun_wstream_consume() for what was used (possibly nothing: it is offered again with the
     * next bytes, and after on_drain). */
    void (*on_data)(struct tun_wstream *s, const uint8_t *data, size_t len, void *ud);
    /* The write queue fell below half of write_limit after a write was refused. */
    void (*on_drain)(struct tun_wstream *s, void *ud);
    /* The stream ended: 0 for an orderly end of input (the peer closed), else a negative
     * TUN_E* or libuv code. Called once; the caller then calls tun_wstream_close(). */
    void (*on_end)(struct tun_wstream *s, int err, void *ud);
};

struct tun_wstream_cfg {
    size_t read_limit;  /* plaintext held for the caller before reading pauses [256 KiB] */
    size_t write_limit; /* bytes queued for the socket before writes are refused [1 MiB] */
    uint64_t linger_ms; /* after close, time for the peer to take what is queued [5000] */
};

/*
 * Accept a pending connection on `server`. With `cred` (a certificate set by the caller) the
 * connection is TLS, else plain. Returns 0 and *out, or a libuv / TUN_E* error (the pending
 * connection is then dropped).
 */
int tun_wstream_accept(uv_stream_t *server, gnutls_certificate_credentials_t cred,
                       const struct tun_wstream_cfg *cfg, const struct tun_wstream_cbs *cbs,
                       void *ud, struct tun_wstream **out);

/* Write plaintext. 0, TUN_EAGAIN (over write_limit: wait for on_drain), TUN_ECLOSED, or a
 * TLS error. Data is copied. */
int tun_wstream_write(struct tun_wstream *s, const void *data, size_t len);

/* The caller used `n` bytes of what on_data offered. */
void tun_wstream_consume(struct tun_wstream *s, size_t n);

/* Bytes queued for the socket. */
size_t tun_wstream_queued(const struct tun_wstream *s);

/* The peer's address ("ip:port"), for logs. */
const char *tun_wstream_peer(const struct tun_wstream *s);

/* Whether this is a TLS stream. */
int tun_wstream_is_tls(const struct tun_wstream *s);

/* Send what is queued, then close (TLS: with a close_notify); a peer that has not taken it
 * all within linger_ms is cut off. No callback after this call; the memory is freed once libuv
 * has closed the handle. */
void tun_wstream_close(struct tun_wstream *s);

/* The same without the lingering: what is already written goes out (libuv writes at once when
 * nothing is queued), anything still queued is dropped, and the handle closes now. For
 * shutdown, where the loop will not run for seconds more. */
void tun_wstream_close_now(struct tun_wstream *s);

/* Load a PEM certificate chain and key into new credentials (for `--tls-cert`/`--tls-key`).
 * 0, or TUN_EINVAL with a message in `err` (what failed and why). */
int tun_wstream_load_cert(const char *cert_file, const char *key_file,
                          gnutls_certificate_credentials_t *out, char *err, size_t errlen);

#endif
