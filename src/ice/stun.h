/*
 * STUN message codec (RFC 8489), sans-IO and allocation-free: a strict parser that points into
 * the caller's buffer, and a writer that fills a caller-supplied buffer. Only short-term
 * credentials (HMAC-SHA1 MESSAGE-INTEGRITY) are supported, which is all ICE (RFC 8445) needs.
 *
 *   header := type:u16 length:u16 cookie:u32 (0x2112A442) txid[12]
 *   attr   := type:u16 length:u16 value[length] pad-to-4
 */
#ifndef TUN_ICE_STUN_H
#define TUN_ICE_STUN_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define TUN_STUN_HEADER       20
#define TUN_STUN_MAGIC        0x2112A442u
#define TUN_STUN_TXID_LEN     12
#define TUN_STUN_FP_XOR       0x5354554Eu
#define TUN_STUN_MAX_UNKNOWN  8   /* unknown comprehension-required types remembered */
#define TUN_STUN_MAX_USERNAME 513 /* RFC 8489 §14.3 */
#define TUN_STUN_MAX_TEXT     763 /* SOFTWARE and ERROR-CODE reason, §14.8 and §14.14 */

#define TUN_STUN_BINDING 0x001

enum tun_stun_class {
    TUN_STUN_REQUEST = 0,
    TUN_STUN_INDICATION = 1,
    TUN_STUN_SUCCESS = 2,
    TUN_STUN_ERROR = 3,
};

enum tun_stun_attr {
    TUN_STUN_ATTR_MAPPED_ADDRESS = 0x0001,
    TUN_STUN_ATTR_USERNAME = 0x0006,
    TUN_STUN_ATTR_MESSAGE_INTEGRITY = 0x0008,
    TUN_STUN_ATTR_ERROR_CODE = 0x0009,
    TUN_STUN_ATTR_UNKNOWN_ATTRIBUTES = 0x000A,
    TUN_STUN_ATTR_XOR_MAPPED_ADDRESS = 0x0020,
    TUN_STUN_ATTR_PRIORITY = 0x0024,
    TUN_STUN_ATTR_USE_CANDIDATE = 0x0025,
    TUN_STUN_ATTR_SOFTWARE = 0x8022,
    TUN_STUN_ATTR_FINGERPRINT = 0x8028,
    TUN_STUN_ATTR_ICE_CONTROLLED = 0x8029,
    TUN_STUN_ATTR_ICE_CONTROLLING = 0x802A,
};

/* Bits of tun_stun_msg.present: which attributes the message carried. */
enum {
    TUN_STUN_HAS_MAPPED = 1u << 0,
    TUN_STUN_HAS_XOR_MAPPED = 1u << 1,
    TUN_STUN_HAS_USERNAME = 1u << 2,
    TUN_STUN_HAS_INTEGRITY = 1u << 3,
    TUN_STUN_HAS_FINGERPRINT = 1u << 4,
    TUN_STUN_HAS_ERROR = 1u << 5,
    TUN_STUN_HAS_PRIORITY = 1u << 6,
    TUN_STUN_HAS_USE_CANDIDATE = 1u << 7,
    TUN_STUN_HAS_CONTROLLING = 1u << 8,
    TUN_STUN_HAS_CONTROLLED = 1u << 9,
    TUN_STUN_HAS_SOFTWARE = 1u << 10,
    TUN_STUN_HAS_UNKNOWN_ATTRS = 1u << 11,
};

/*
 * A parsed message. Pointers point into the parsed buffer and live as long as it does. Only
 * the first occurrence of each attribute counts (RFC 8489 §14).
 */
struct tun_stun_msg {
    uint16_t method; /* 12 bits */
    uint8_t cls;     /* enum tun_stun_class */
    uint8_t txid[TUN_STUN_TXID_LEN];
    uint32_t present;                           /* TUN_STUN_HAS_* */
    struct sockaddr_storage mapped, xor_mapped; /* AF_INET or AF_INET6, port in network order */
    const uint8_t *username;
    size_t username_len;
    const uint8_t *software;
    size_t software_len;
    size_t integrity_off;   /* offset of the MESSAGE-INTEGRITY attribute header */
    size_t fingerprint_off; /* offset of the FINGERPRINT attribute header (already verified) */
    int error_code;         /* 300..699 */
    const uint8_t *reason;
    size_t reason_len;
    uint32_t priority;
    uint64_t tiebreaker; /* ICE-CONTROLLING or ICE-CONTROLLED */
    /* UNKNOWN-ATTRIBUTES (in a 420 response): big-endian u16 types. */
    const uint8_t *unknown_attrs;
    size_t unknown_attrs_count;
    /* Comprehension-required attribute types (< 0x8000) this parser does not know: a server
     * answers 420 listing them. At most TUN_STUN_MAX_UNKNOWN are kept; n_unknown counts those. */
    uint16_t unknown[TUN_STUN_MAX_UNKNOWN];
    size_t n_unknown;
};

/*
 * Cheap test whether a datagram could be STUN (first two bits 0, magic cookie), for
 * demultiplexing STUN from other traffic on one socket. Does not validate the message.
 */
int tun_stun_is_stun(const uint8_t *buf, size_t len);

/*
 * Parse and validate one message that must fill buf exactly. Returns 0, TUN_ELENGTH (length
 * field or datagram size wrong), TUN_EFORMAT (bad header bits, cookie, attribute framing or
 * value), TUN_ERANGE (ERROR-CODE outside 300..699, over-long text), TUN_EPROTO (attribute
 * after FINGERPRINT) or TUN_ECHECKSUM (FINGERPRINT mismatch). A failed parse leaves *msg
 * unspecified.
 */
int tun_stun_parse(const uint8_t *buf, size_t len, struct tun_stun_msg *msg);

/*
 * Verify MESSAGE-INTEGRITY with a short-term credential (key = the password bytes, no SASLprep).
 * Returns 0, TUN_EINVAL (the message has no MESSAGE-INTEGRITY) or TUN_ECHECKSUM.
 */
int tun_stun_check_integrity(const uint8_t *buf, size_t len, const struct tun_stun_msg *msg,
                             const uint8_t *key, size_t keylen);

/* Method and class <-> the 14-bit message type. */
uint16_t tun_stun_type(uint16_t method, uint8_t cls);

/* Fill a fresh random transaction id: 0 or TUN_ECRYPTO (libsodium failed to start). */
int tun_stun_new_txid(uint8_t txid[TUN_STUN_TXID_LEN]);

/*
 * Writer. Errors are sticky: once an add fails, later calls do nothing and tun_stun_end()
 * returns the first error (TUN_ETOOBIG when the buffer is too small, TUN_EINVAL on misuse such
 * as adding an attribute after FINGERPRINT, or anything but FINGERPRINT after
 * MESSAGE-INTEGRITY). The add functions also return 0 or that error.
 */
struct tun_stun_writer {
    uint8_t *buf;
    size_t cap, len;
    int err;
    int sealed; /* 1 after MESSAGE-INTEGRITY, 2 after FINGERPRINT */
};

int tun_stun_begin(struct tun_stun_writer *w, uint8_t *buf, size_t cap, uint16_t method,
                   uint8_t cls, const uint8_t txid[TUN_STUN_TXID_LEN]);
int tun_stun_add_bytes(struct tun_stun_writer *w, uint16_t type, const void *data, size_t len);
int tun_stun_add_u32(struct tun_stun_writer *w, uint16_t type, uint32_t v);
int tun_stun_add_u64(struct tun_stun_writer *w, uint16_t type, uint64_t v);
int tun_stun_add_flag(struct tun_stun_writer *w, uint16_t type);
/* XOR-MAPPED-ADDRESS / MAPPED-ADDRESS from an AF_INET or AF_INET6 sockaddr. */
int tun_stun_add_xor_address(struct tun_stun_writer *w, const struct sockaddr *sa);
int tun_stun_add_address(struct tun_stun_writer *w, const struct sockaddr *sa);
/* ERROR-CODE; code 300..699, reason UTF-8 of at most TUN_STUN_MAX_TEXT bytes (may be NULL). */
int tun_stun_add_error(struct tun_stun_writer *w, int code, const char *reason, size_t reason_len);
/* UNKNOWN-ATTRIBUTES listing n types. */
int tun_stun_add_unknown(struct tun_stun_writer *w, const uint16_t *types, size_t n);
int tun_stun_add_integrity(struct tun_stun_writer *w, const uint8_t *key, size_t keylen);
int tun_stun_add_fingerprint(struct tun_stun_writer *w);
/* Total message length, or the first error. */
int tun_stun_end(struct tun_stun_writer *w);

/*
 * Binding helpers. A key (may be NULL) adds MESSAGE-INTEGRITY; every message ends with
 * FINGERPRINT as ICE requires. They return the length written or a negative error.
 */
int tun_stun_binding_request(uint8_t *buf, size_t cap, const uint8_t txid[TUN_STUN_TXID_LEN],
                             const uint8_t *key, size_t keylen);
int tun_stun_binding_indication(uint8_t *buf, size_t cap, const uint8_t txid[TUN_STUN_TXID_LEN]);
int tun_stun_binding_success(uint8_t *buf, size_t cap, const uint8_t txid[TUN_STUN_TXID_LEN],
                             const struct sockaddr *mapped, const uint8_t *key, size_t keylen);
/* unknown/n_unknown fill UNKNOWN-ATTRIBUTES (for 420); pass NULL/0 otherwise. */
int tun_stun_binding_error(uint8_t *buf, size_t cap, const uint8_t txid[TUN_STUN_TXID_LEN],
                           int code, const char *reason, const uint16_t *unknown, size_t n_unknown,
                           const uint8_t *key, size_t keylen);

#endif
