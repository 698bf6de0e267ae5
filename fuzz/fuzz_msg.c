/*
 * Fuzz target for the tunnel/1 message decoder and the source parser. Feeds the input in
 * chunks whose sizes come from the input itself, so every split point of a message is tried.
 * Build with libFuzzer (see fuzz/README.md) or run through fuzz/standalone.c.
 */
#include "proto/msg.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    struct tun_msg_reader r;
    tun_msg_reader_init(&r, (data[0] & 1) ? TUN_MSG_MAX_BODY : 0);
    size_t step = (size_t)(data[0] >> 1) + 1;
    const uint8_t *p = data + 1;
    size_t left = size - 1;
    while (left > 0) {
        size_t chunk = left < step ? left : step;
        const uint8_t *q = p;
        size_t len = chunk;
        while (len > 0) {
            struct tun_msg m;
            int rc = tun_msg_read(&r, &q, &len, &m);
            if (rc < 0)
                goto done;
            if (rc == 1) {
                /* Touch the whole body: ASan catches any length lie. */
                volatile uint8_t sink = 0;
                for (size_t i = 0; i < m.len; i++)
                    sink ^= m.body[i];
                (void)sink;
                if (m.type == TUN_MSG_OPEN) {
                    char host[256];
                    uint16_t port;
                    int udp;
                    if (tun_msg_parse_source(m.body, m.len, &udp, host, sizeof(host), &port) == 0 &&
                        (port == 0 || strlen(host) == 0))
                        abort();
                }
            }
        }
        p += chunk;
        left -= chunk;
    }
done:
    tun_msg_reader_free(&r);
    uint64_t v;
    (void)tun_varint_decode(data, size, &v);
    return 0;
}
