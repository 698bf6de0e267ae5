/*
 * The small part of the DNS message format (RFC 1035 section 4) that pkarr records need.
 *
 * pkarr signs a DNS *answer* packet: a 12-byte header and resource records whose names end in
 * the publisher's z-base-32 key. We build such packets (TXT, A and AAAA records in the answer
 * section, with name compression) and we decode any well-formed message, whoever wrote it,
 * into a fixed-size structure.
 *
 * The decoder is strict because it runs on packets from the network (relay PUT bodies, GET
 * answers) before and after their signature is checked:
 *   - every length is checked against the end of the buffer;
 *   - a compression pointer must point before the start of the label run it interrupts, so
 *     the runs visited by one name start at strictly decreasing offsets: loops and forward
 *     or self pointers are impossible, and a name costs at most O(message length) steps;
 *   - labels are at most 63 bytes, a name at most 255 bytes in wire form, and the reserved
 *     label types 0x40/0x80 are refused;
 *   - TXT rdata must be exactly filled by its character-strings, A rdata is 4 bytes, AAAA 16;
 *   - no byte may follow the last record.
 * Other record types are kept as opaque rdata (their embedded names are not expanded).
 * Sections: questions are checked and skipped; answer, authority and additional records are
 * all returned, tagged with their section.
 *
 * Sans-IO, no allocation, safe on any input (fuzzed by fuzz/fuzz_pkarr.c).
 */
#ifndef TUN_DISCOVERY_DNS_H
#define TUN_DISCOVERY_DNS_H

#include <stddef.h>
#include <stdint.h>

#define TUN_DNS_HEADER_LEN 12
#define TUN_DNS_LABEL_MAX  63
#define TUN_DNS_NAME_MAX   255 /* wire form, length bytes and the root byte included */
#define TUN_DNS_TXT_MAX    255 /* one character-string */
#define TUN_DNS_MAX_RR     32  /* records stored by tun_dns_decode() */
#define TUN_DNS_MAX_STR    64  /* TXT character-strings stored, over all records */

#define TUN_DNS_TYPE_A    1
#define TUN_DNS_TYPE_TXT  16
#define TUN_DNS_TYPE_AAAA 28
#define TUN_DNS_CLASS_IN  1

#define TUN_DNS_FLAG_QR 0x8000 /* a response */
#define TUN_DNS_FLAG_AA 0x0400 /* authoritative answer */

enum tun_dns_section {
    TUN_DNS_ANSWER = 1,
    TUN_DNS_AUTHORITY = 2,
    TUN_DNS_ADDITIONAL = 3,
};

/*
 * A domain name in uncompressed wire form: length-prefixed labels ending with the zero-length
 * root label, e.g. "\x07_tunnel\x03key\x00". `len` counts all of it (1 for the root name).
 * Labels may hold any byte; comparisons ignore ASCII case.
 */
struct tun_dns_name {
    uint8_t len;
    uint8_t wire[TUN_DNS_NAME_MAX];
};

/* One TXT character-string; `p` points into the decoded message. */
struct tun_dns_str {
    const uint8_t *p;
    uint8_t len;
};

struct tun_dns_rr {
    struct tun_dns_name name;
    uint8_t section; /* enum tun_dns_section */
    uint16_t type, cls;
    uint32_t ttl;
    const uint8_t *rdata; /* into the decoded message */
    uint16_t rdlen;
    /* TXT only: this record's character-strings are str[str_first .. str_first + str_count).
     * str_count is smaller than the real number when the string table ran full. */
    uint16_t str_first, str_count;
};

struct tun_dns_msg {
    uint16_t id, flags;
    uint16_t qdcount, ancount, nscount, arcount;
    size_t n_rr;   /* records stored in rr[], in message order */
    size_t n_str;  /* strings stored in str[] */
    int truncated; /* 1 when the message had more records or TXT strings than fit here; the
                      rest were still fully checked, just not stored */
    struct tun_dns_rr rr[TUN_DNS_MAX_RR];
    struct tun_dns_str str[TUN_DNS_MAX_STR];
};

/*
 * Decode the `len`-byte message at `buf` into `m` (which may be NULL to only check it).
 * Pointers in `m` point into `buf`, which must outlive them.
 *
 * Returns 0, or
 *   TUN_ELENGTH  the message is shorter than its header, a name or field runs past the end,
 *                or bytes follow the last record;
 *   TUN_EFORMAT  anything else malformed: a compression pointer that is not strictly
 *                backwards, a reserved label type, a name over 255 bytes, A/AAAA rdata of the
 *                wrong size, TXT rdata not exactly filled by its strings.
 * `m` is unspecified after an error.
 */
int tun_dns_decode(struct tun_dns_msg *m, const uint8_t *buf, size_t len);

/*
 * Parse dotted text ("_tunnel.abc", "abc.", "." or "" for the root) of `len` bytes into `n`.
 * Labels are taken literally (no backslash escapes) and must be printable ASCII without
 * spaces.
 * Returns 0, or
 *   TUN_EFORMAT  an empty label ("a..b", ".a") or a byte that is not printable ASCII;
 *   TUN_ETOOBIG  a label over 63 bytes or a name over 255 bytes in wire form.
 */
int tun_dns_name_from_text(struct tun_dns_name *n, const char *text, size_t len);

/*
 * Write `n` as dotted text without the final dot ("." for the root) and a NUL into `out`.
 * '.', '\\' and bytes outside printable ASCII are escaped as "\." , "\\" and "\DDD", so the
 * text is unambiguous. Returns the length (without NUL), or TUN_ETOOBIG if `cap` is too small.
 */
int tun_dns_name_to_text(char *out, size_t cap, const struct tun_dns_name *n);

/* 1 when both names are equal ignoring ASCII case, else 0. */
int tun_dns_name_equal(const struct tun_dns_name *a, const struct tun_dns_name *b);

/*
 * Message writer over a caller buffer. Records go into the answer section; names are
 * compressed against the names already written (pointers to earlier suffixes). Errors are
 * sticky: after the first failure every call returns it and tun_dns_finish() reports it.
 */
#define TUN_DNS_WRITER_PTRS 32

struct tun_dns_writer {
    uint8_t *buf;
    size_t cap, len;
    int err;
    uint16_t ancount;
    uint16_t n_known;
    uint16_t known[TUN_DNS_WRITER_PTRS]; /* offsets of labels written in full */
};

/* Start a message with the given id and flags (e.g. TUN_DNS_FLAG_QR), no questions. */
void tun_dns_writer_init(struct tun_dns_writer *w, uint8_t *buf, size_t cap, uint16_t id,
                         uint16_t flags);

/*
 * Append a record of class IN with raw rdata. Returns 0 or
 *   TUN_ETOOBIG  the buffer is full, or rdlen > 65535, or 65535 records were written;
 *   TUN_EINVAL   a NULL name or NULL rdata with rdlen > 0.
 */
int tun_dns_add_rr(struct tun_dns_writer *w, const struct tun_dns_name *name, uint16_t type,
                   uint32_t ttl, const uint8_t *rdata, size_t rdlen);

/* A TXT record holding `n` character-strings (each at most 255 bytes by its type); an empty
 * list gives empty rdata. TUN_ETOOBIG if the rdata would exceed 65535 bytes. */
int tun_dns_add_txt(struct tun_dns_writer *w, const struct tun_dns_name *name, uint32_t ttl,
                    const struct tun_dns_str *strs, size_t n);

int tun_dns_add_a(struct tun_dns_writer *w, const struct tun_dns_name *name, uint32_t ttl,
                  const uint8_t addr[4]);
int tun_dns_add_aaaa(struct tun_dns_writer *w, const struct tun_dns_name *name, uint32_t ttl,
                     const uint8_t addr[16]);

/* Fill in the header counts. Returns the message length, or the first error. */
int tun_dns_finish(struct tun_dns_writer *w);

#endif
