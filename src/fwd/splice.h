/*
 * TCP <-> QUIC stream splicing with backpressure in both directions, faithful half-close and
 * resets carried as resets. Used by both the client and the server once a stream's OPEN has
 * been accepted.
 */
#ifndef TUN_FWD_SPLICE_H
#define TUN_FWD_SPLICE_H

#include "quic/quic.h"

#include <uv.h>

struct tun_splice;

/* Called once when both directions are done and the TCP handle is closed. `up` counts bytes
 * TCP -> stream, `down` stream -> TCP. */
typedef void (*tun_splice_done_cb)(struct tun_splice *sp, uint64_t up, uint64_t down, int reset,
                                   void *ud);

/*
 * Take over `tcp` (an initialised, connected uv_tcp_t that the splice now owns and will free;
 * it must have been malloc'ed) and `s`. Bytes the stream already delivered beyond the OPEN
 * exchange can be passed in `pending`/`npending`.
 */
int tun_splice_start(uv_tcp_t *tcp, struct tun_qstream *s, const uint8_t *pending, size_t npending,
                     tun_splice_done_cb done, void *ud, struct tun_splice **out);
/* Abort: reset the stream and the TCP connection. */
void tun_splice_abort(struct tun_splice *sp);

#endif
