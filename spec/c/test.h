/*
 * A minimal test harness for spec/c/test_*.c: each check prints file:line on failure and the
 * executable exits non-zero (via TEST_DONE()) when any check failed. Every test file is one
 * translation unit, so the counters can live here.
 *
 *   int main(void) { CHECK(x == 1); CHECK_INT_EQ(f(), 0); return TEST_DONE(); }
 */
#ifndef TUN_SPEC_TEST_H
#define TUN_SPEC_TEST_H

#include <stdio.h>
#include <string.h>

static int test_checks, test_failures;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        test_checks++;                                                                             \
        if (!(cond)) {                                                                             \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

/* Integers are compared as long long and both values are printed on failure. */
#define CHECK_INT_EQ(actual, expected)                                                             \
    do {                                                                                           \
        long long a_ = (long long)(actual), e_ = (long long)(expected);                            \
        test_checks++;                                                                             \
        if (a_ != e_) {                                                                            \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: %s is %lld, expected %lld (%s)\n", __FILE__, __LINE__,         \
                    #actual, a_, e_, #expected);                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_STR_EQ(actual, expected)                                                             \
    do {                                                                                           \
        const char *a_ = (actual), *e_ = (expected);                                               \
        test_checks++;                                                                             \
        if (strcmp(a_, e_) != 0) {                                                                 \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: %s is \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #actual, \
                    a_, e_);                                                                       \
        }                                                                                          \
    } while (0)

#define CHECK_MEM_EQ(actual, expected, n)                                                          \
    do {                                                                                           \
        test_checks++;                                                                             \
        if (memcmp((actual), (expected), (n)) != 0) {                                              \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: %s differs from %s\n", __FILE__, __LINE__, #actual,            \
                    #expected);                                                                    \
        }                                                                                          \
    } while (0)

/* Print the summary line and give main's return value. */
#define TEST_DONE()                                                                                \
    (fprintf(test_failures ? stderr : stdout, "%s: %d checks, %d failed\n", __FILE__, test_checks, \
             test_failures),                                                                       \
     test_failures ? 1 : 0)

#endif
