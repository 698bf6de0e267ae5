/*
 * A driver that runs a libFuzzer target without libFuzzer, so every fuzz target also runs in
 * ctest (and under ASan/UBSan) on machines without clang:
 *
 *   fuzz_<name>_run [ITERATIONS] [SEED] [CORPUS_FILE...]
 *
 * Each corpus file is run as is, then ITERATIONS inputs are made by mutating corpus entries
 * (or from random bytes when there is no corpus): flips, inserts, deletes, splices, length
 * changes. The sequence depends only on SEED, so a failure can be replayed. This is a smoke
 * test, not coverage-guided fuzzing: use the libFuzzer build (fuzz/README.md) for long runs.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUT  4096
#define MAX_CORPUS 256

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: fast, and plenty random for picking mutations. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static uint8_t *corpus[MAX_CORPUS];
static size_t corpus_len[MAX_CORPUS];
static size_t ncorpus;

static void load(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f || ncorpus == MAX_CORPUS) {
        if (f)
            fclose(f);
        return;
    }
    uint8_t *buf = malloc(MAX_INPUT);
    size_t n = buf ? fread(buf, 1, MAX_INPUT, f) : 0;
    fclose(f);
    if (!buf)
        return;
    corpus[ncorpus] = buf;
    corpus_len[ncorpus++] = n;
    /* Run the seed itself (through a copy of exactly its size, so ASan sees overreads). */
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, buf, n);
    LLVMFuzzerTestOneInput(copy, n);
    free(copy);
}

static size_t mutate(uint8_t *buf, size_t len)
{
    int rounds = 1 + (int)(rnd() % 4);
    for (int r = 0; r < rounds; r++) {
        switch (rnd() % 7) {
        case 0: /* flip a bit */
            if (len)
                buf[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
            break;
        case 1: /* random byte */
            if (len)
                buf[rnd() % len] = (uint8_t)rnd();
            break;
        case 2: /* insert bytes */
            if (len < MAX_INPUT - 8) {
                size_t at = len ? rnd() % (len + 1) : 0, n = 1 + rnd() % 8;
                memmove(buf + at + n, buf + at, len - at);
                for (size_t i = 0; i < n; i++)
                    buf[at + i] = (uint8_t)rnd();
                len += n;
            }
            break;
        case 3: /* delete bytes */
            if (len) {
                size_t at = rnd() % len, n = 1 + rnd() % 8;
                if (n > len - at)
                    n = len - at;
                memmove(buf + at, buf + at + n, len - at - n);
                len -= n;
            }
            break;
        case 4: /* truncate */
            if (len)
                len = rnd() % len;
            break;
        case 5: /* interesting values */
            if (len) {
                static const uint8_t v[] = {0, 1, 0x7f, 0x80, 0xff, 0x40, 0x3f, 0xc0};
                buf[rnd() % len] = v[rnd() % sizeof(v)];
            }
            break;
        default: /* splice in part of another corpus entry */
            if (ncorpus) {
                size_t k = rnd() % ncorpus, n = corpus_len[k];
                if (n && len + n < MAX_INPUT) {
                    size_t from = rnd() % n, cnt = 1 + rnd() % (n - from);
                    size_t at = len ? rnd() % (len + 1) : 0;
                    memmove(buf + at + cnt, buf + at, len - at);
                    memcpy(buf + at, corpus[k] + from, cnt);
                    len += cnt;
                }
            }
            break;
        }
    }
    return len;
}

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 100000;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 0x9e3779b97f4a7c15ull;
    if (rng_state == 0)
        rng_state = 1;
    for (int i = 3; i < argc; i++)
        load(argv[i]);
    uint8_t *buf = malloc(MAX_INPUT);
    for (long it = 0; it < iterations; it++) {
        size_t len;
        if (ncorpus && rnd() % 8) {
            size_t k = rnd() % ncorpus;
            len = corpus_len[k];
            memcpy(buf, corpus[k], len);
        } else {
            len = rnd() % 256;
            for (size_t i = 0; i < len; i++)
                buf[i] = (uint8_t)rnd();
        }
        len = mutate(buf, len);
        /* An exact-size copy lets ASan catch reads past the end. */
        uint8_t *in = malloc(len ? len : 1);
        memcpy(in, buf, len);
        LLVMFuzzerTestOneInput(in, len);
        free(in);
    }
    free(buf);
    for (size_t i = 0; i < ncorpus; i++)
        free(corpus[i]);
    printf("%ld inputs, %zu corpus entries: no crash\n", iterations, ncorpus);
    return 0;
}
