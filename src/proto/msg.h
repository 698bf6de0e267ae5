/*
 * The tunnel/1 wire messages (docs/protocol.md): sans-IO encoder and incremental decoder.
 *
 *   frame := type:u8 length:u16be body[length]
 *
 * Control messages have bodies of at most TUN_MSG_MAX_CONTROL bytes; UDP_DATA frames carry one
 * datagram of up to 65535 bytes.
 */
#ifndef TUN_PROTO_MSG_H
#define TUN_PROTO_MSG_H

#include <stddef.h>
#include <stdint.h>

#define TUN_PROTO_VERSION   1
#define TUN_MSG_HEADER      3
#define TUN_MSG_MAX_CONTROL 1024
#define TUN_MSG_MAX_BODY    65535
#define TUN_MSG_MAX_TOKEN   255

enum tun_msg_type {
    TUN_MSG_AUTH = 0x01,      /* client: version:u8 token[] */
    TUN_MSG_AUTH_OK = 0x02,   /* server: version:u8 */
    TUN_MSG_AUTH_FAIL = 0x03, /* server: code:u8 reason[] */
    TUN_MSG_OPEN = 0x10,      /* client: source URL, "tcp://host:port" or "udp://host:port" */
    TUN_MSG_OPEN_OK = 0x11,   /* server: empty (TCP) or flow:u32be (UDP) */
    TUN_MSG_OPEN_FAIL = 0x12, /* server: code:u8 reason[] */
    TUN_MSG_UDP_DATA = 0x20,  /* both: one datagram too large for a DATAGRAM frame */
};

/* Reasons carried in AUTH_FAIL and OPEN_FAIL. */
enum tun_msg_code {
    TUN_CODE_DENIED = 1,       /* policy or allow-list said no */
    TUN_CODE_LIMIT = 2,        /* session limit reached */
    TUN_CODE_BAD_REQUEST = 3,  /* malformed request */
    TUN_CODE_CONNECT = 4,      /* the server could not reach the source */
    TUN_CODE_RESOLVE = 5,      /* the source's host name did not resolve */
    TUN_CODE_RATE_LIMITED = 6, /* too many failed attempts */
    TUN_CODE_BAD_TOKEN = 7,    /* authentication failed */
    TUN_CODE_INTERNAL = 8,
};

/* Application error codes in CONNECTION_CLOSE. */
enum tun_close_code {
    TUN_CLOSE_DONE = 0,
    TUN_CLOSE_AUTH_FAILED = 1,
    TUN_CLOSE_AUTH_TIMEOUT = 2,
    TUN_CLOSE_RATE_LIMITED = 3,
    TUN_CLOSE_PROTOCOL = 4,
    TUN_CLOSE_SHUTDOWN = 5,
    TUN_CLOSE_KICKED = 6,
};

/* Application error codes in RESET_STREAM / STOP_SENDING. */
enum tun_reset_code {
    TUN_RESET_TCP = 0x100,      /* the TCP peer reset its connection */
    TUN_RESET_PROTOCOL = 0x101, /* a malformed or unexpected message */
    TUN_RESET_CLOSED = 0x102,   /* the other side went away */
};

struct tun_msg {
    uint8_t type;
    uint16_t len;
    const uint8_t *body; /* points into the decoder's buffer or the caller's input */
};

/* Incremental decoder: feed bytes, take whole messages. */
struct tun_msg_reader {
    uint8_t hdr[TUN_MSG_HEADER];
    size_t hdr_have;
    uint8_t *body;
    size_t body_cap, body_have;
    size_t max_body; /* TUN_MSG_MAX_CONTROL unless the stream carries UDP_DATA */
};

void tun_msg_reader_init(struct tun_msg_reader *r, size_t max_body);
void tun_msg_reader_free(struct tun_msg_reader *r);
/*
 * Consume bytes from `*data` (advancing it and decrementing `*len`) until one message is
 * complete. Returns 1 with `*out` set (valid until the next call), 0 when more input is
 * needed, TUN_EPROTO for an unknown type and TUN_ETOOBIG for a body over the limit. After an
 * error the reader must not be used again.
 */
int tun_msg_read(struct tun_msg_reader *r, const uint8_t **data, size_t *len, struct tun_msg *out);

/* Write header + body into `out` (capacity `cap`). Returns the frame size or TUN_ETOOBIG. */
int tun_msg_encode(uint8_t type, const void *body, size_t len, uint8_t *out, size_t cap);

/* Parse "tcp://host:port" / "udp://host:port" (host may be [v6]). Returns 0 and fills
 * `*udp`, `host` (NUL-terminated, brackets removed) and `*port`, or TUN_EFORMAT. */
int tun_msg_parse_source(const uint8_t *s, size_t len, int *udp, char *host, size_t hostcap,
                         uint16_t *port);

/* QUIC variable-length integers, used to tag datagrams with their flow id. */
size_t tun_varint_encode(uint64_t v, uint8_t *out); /* out needs 8 bytes */
/* Returns the bytes consumed, or 0 when the input is truncated. */
size_t tun_varint_decode(const uint8_t *in, size_t len, uint64_t *v);

#endif
