/*
 * WebSocket framing (RFC 6455 §5), both roles, sans-IO and allocation-free. No extensions are
 * ever negotiated, so the RSV bits must be 0. See docs/web.md.
 *
 *   frame := FIN RSV1 RSV2 RSV3 opcode:4 | MASK len:7 [len:16 | len:64] [mask:32] payload
 *
 * Receiving: the caller keeps the unconsumed bytes of the stream in one contiguous buffer and
 * calls tun_ws_read() on it. A frame is processed only once it is complete; its payload is
 * unmasked in place. A message that is one frame (the common case: one relay packet per binary
 * message) and every control frame are returned as views into that buffer, so nothing is
 * copied. Only the fragments of a fragmented message are copied, into a caller-supplied
 * assembly buffer. Sending: tun_ws_header_encode() plus tun_ws_mask() over the payload in
 * place (for writev), or tun_ws_frame_write() into one buffer.
 */
#ifndef TUN_WEB_WS_H
#define TUN_WEB_WS_H

#include <stddef.h>
#include <stdint.h>

#define TUN_WS_MAX_HEADER          14      /* 2 + 8 (64-bit length) + 4 (mask) */
#define TUN_WS_MAX_CONTROL         125     /* control frame payload limit (§5.5) */
#define TUN_WS_MAX_CLOSE_REASON    123     /* 125 minus the 2-byte code */
#define TUN_WS_DEFAULT_MAX_MESSAGE 1048576 /* 1 MiB, iroh's max relay frame */
#define TUN_WS_MAX_MESSAGE_LIMIT   (1u << 30)

enum tun_ws_opcode {
    TUN_WS_CONT = 0x0,
    TUN_WS_TEXT = 0x1,
    TUN_WS_BINARY = 0x2,
    TUN_WS_CLOSE = 0x8,
    TUN_WS_PING = 0x9,
    TUN_WS_PONG = 0xA,
};

/* Which side of the connection the reader (or the header check) is on. */
enum tun_ws_role {
    TUN_WS_CLIENT = 1, /* receives unmasked frames, sends masked ones */
    TUN_WS_SERVER = 2, /* receives masked frames, sends unmasked ones */
};

/* Close status codes (§7.4.1). 1005, 1006 and 1015 are reported locally, never sent. */
enum tun_ws_close_code {
    TUN_WS_CLOSE_NORMAL = 1000,
    TUN_WS_CLOSE_GOING_AWAY = 1001,
    TUN_WS_CLOSE_PROTOCOL_ERROR = 1002,
    TUN_WS_CLOSE_UNSUPPORTED = 1003,
    TUN_WS_CLOSE_NO_STATUS = 1005,
    TUN_WS_CLOSE_ABNORMAL = 1006,
    TUN_WS_CLOSE_INVALID_DATA = 1007,
    TUN_WS_CLOSE_POLICY = 1008,
    TUN_WS_CLOSE_TOO_BIG = 1009,
    TUN_WS_CLOSE_EXTENSION = 1010,
    TUN_WS_CLOSE_INTERNAL = 1011,
    TUN_WS_CLOSE_TLS = 1015,
};

/* A decoded frame header. */
struct tun_ws_frame {
    int fin;
    int opcode;
    int masked;
    uint8_t mask[4];
    uint64_t len;      /* payload length */
    size_t header_len; /* 2..14 */
};

/*
 * Decode the frame header at buf[0..len). role is the receiving side: a server requires the
 * MASK bit, a client requires it clear. Returns the header length (2..14), 0 when more bytes
 * are needed (nothing is wrong so far), or TUN_EPROTO (close with 1002): RSV bits set, an
 * unknown opcode, a wrong MASK bit for the role, a length not in its shortest encoding or with
 * the top bit set, a control frame that is fragmented or longer than 125 bytes. TUN_EINVAL for
 * bad arguments. *why (may be NULL) gets a short static text.
 */
int tun_ws_header_decode(const uint8_t *buf, size_t len, enum tun_ws_role role,
                         struct tun_ws_frame *f, const char **why);

/*
 * Encode a frame header (shortest length encoding) into out. mask is the 4-byte masking key a
 * client uses, or NULL (server). Returns the header length, or TUN_EINVAL: unknown opcode, a
 * control frame that is fragmented or longer than 125 bytes, len >= 2^63.
 */
int tun_ws_header_encode(uint8_t out[TUN_WS_MAX_HEADER], int fin, int opcode, uint64_t len,
                         const uint8_t *mask);

/*
 * XOR data[0..len) with the masking key in place (§5.3), word at a time. offset is the
 * position of data[0] within the payload, so a payload can be masked in pieces. Masking twice
 * unmasks.
 */
void tun_ws_mask(uint8_t *data, size_t len, const uint8_t key[4], uint64_t offset);

/* Draw a masking key from the libsodium CSPRNG: 0 or TUN_ECRYPTO. */
int tun_ws_new_mask(uint8_t key[4]);

/* 1 when s[0..n) is well-formed UTF-8 (RFC 3629: no overlongs, surrogates or > U+10FFFF). */
int tun_ws_utf8_valid(const uint8_t *s, size_t n);

/* 1 when code may appear in a close frame: 1000-1003, 1007-1014 and 3000-4999. */
int tun_ws_close_code_ok(int code);

/*
 * Write a whole frame (header and payload, masked with mask when not NULL) into buf. The
 * payload must not overlap buf. Returns the frame length, TUN_ETOOBIG when it does not fit in
 * cap (or in an int), or TUN_EINVAL as tun_ws_header_encode().
 */
int tun_ws_frame_write(uint8_t *buf, size_t cap, int fin, int opcode, const void *payload,
                       size_t len, const uint8_t *mask);

/*
 * Write a close frame. code 0 sends an empty body (no status); otherwise code must pass
 * tun_ws_close_code_ok() and the reason (may be NULL) be UTF-8 of at most 123 bytes. Returns
 * the frame length, TUN_ETOOBIG or TUN_EINVAL.
 */
int tun_ws_close_write(uint8_t *buf, size_t cap, int code, const char *reason, size_t reason_len,
                       const uint8_t *mask);

/*
 * Parse an (unmasked) close payload. An empty one gives code 1005 and an empty reason. Returns
 * 0, TUN_EPROTO (1 byte long, or a code that may not be sent) or TUN_EFORMAT (the reason is not
 * UTF-8: close with 1007).
 */
int tun_ws_close_parse(const uint8_t *payload, size_t len, int *code, const char **reason,
                       size_t *reason_len);

/* --- receiving -------------------------------------------------------------------------------- */

enum tun_ws_event_type {
    TUN_WS_EV_NONE = 0, /* nothing to report (more bytes needed, or a fragment was stored) */
    TUN_WS_EV_MESSAGE,  /* a complete text or binary message */
    TUN_WS_EV_PING,     /* answer with a pong carrying the same payload */
    TUN_WS_EV_PONG,
    TUN_WS_EV_CLOSE, /* the peer's close frame; the reader accepts nothing after it */
};

struct tun_ws_event {
    int type;      /* enum tun_ws_event_type */
    int opcode;    /* MESSAGE: TUN_WS_TEXT or TUN_WS_BINARY */
    uint8_t *data; /* payload: a view into the caller's buffer or into the assembly buffer */
    size_t len;
    int close_code;     /* CLOSE: the peer's code, 1005 when it sent none */
    const char *reason; /* CLOSE: UTF-8, not NUL-terminated, inside data */
    size_t reason_len;
};

struct tun_ws_reader {
    int role;           /* enum tun_ws_role */
    size_t max_message; /* larger messages fail with 1009 */
    uint8_t *asm_buf;   /* fragmented messages are assembled here */
    size_t asm_cap;
    size_t asm_len;
    int asm_opcode; /* opcode of the fragmented message in progress, 0 when none */
    int closed;     /* a close frame was read */
    int err;        /* sticky error */
    int close_code; /* after an error: the code to close with (1002, 1007 or 1009) */
    const char *why;
    size_t need; /* after a 0 return: the bytes the next frame needs from the buffer start */
};

/*
 * Set up a reader. max_message 0 means TUN_WS_DEFAULT_MAX_MESSAGE; values above
 * TUN_WS_MAX_MESSAGE_LIMIT are clamped to it. asm_buf/asm_cap (may be NULL/0) hold fragmented
 * messages, which are therefore limited to min(max_message, asm_cap) bytes; pass asm_cap >=
 * max_message to accept every message the limit allows. The caller's receive buffer must be
 * able to hold TUN_WS_MAX_HEADER + max_message bytes, since a frame is only taken whole.
 */
void tun_ws_reader_init(struct tun_ws_reader *r, enum tun_ws_role role, size_t max_message,
                        uint8_t *asm_buf, size_t asm_cap);

/*
 * Process the frame at buf[0..len), the stream's unconsumed bytes. Returns the number of bytes
 * consumed (one whole frame) and fills *ev, or 0 when the frame is not complete yet (r->need
 * then says how many bytes it needs, when known), or a sticky error:
 *   TUN_EPROTO  (close 1002) a bad header (see tun_ws_header_decode), a continuation without a
 *               message, a new message inside a fragmented one, a bad close payload;
 *   TUN_ETOOBIG (close 1009) a message larger than the limit (detected from the header);
 *   TUN_EFORMAT (close 1007) a text message or close reason that is not UTF-8;
 *   TUN_ECLOSED after a close frame was read; TUN_EINVAL for bad arguments.
 * r->close_code and r->why describe the error. The consumed bytes of buf are modified
 * (unmasked in place) and must not be fed again. Event data stays valid until the next call
 * (assembly buffer) or until the caller reuses those bytes of buf (views), whichever is first.
 * Text messages are UTF-8-checked once complete (fragmented ones at the last fragment).
 */
int tun_ws_read(struct tun_ws_reader *r, uint8_t *buf, size_t len, struct tun_ws_event *ev);

#endif
