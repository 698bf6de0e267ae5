/*
 * A throwaway TLS identity for C tests: a self-signed ECDSA P-256 certificate for "localhost"
 * and 127.0.0.1, written as PEM files in a fresh temporary directory. Include after test.h.
 *
 *   struct test_cert tc; test_cert_make(&tc); ... tc.cert, tc.key ...; test_cert_remove(&tc);
 */
#ifndef TUN_SPEC_TEST_CERT_H
#define TUN_SPEC_TEST_CERT_H

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

struct test_cert {
    char dir[64], cert[128], key[128];
};

static void test_cert_write(const char *path, const gnutls_datum_t *d)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) {
        CHECK_INT_EQ(fwrite(d->data, 1, d->size, f), d->size);
        fclose(f);
    }
}

static void test_cert_make(struct test_cert *tc)
{
    snprintf(tc->dir, sizeof(tc->dir), "/tmp/tun-test-cert-XXXXXX");
    CHECK(mkdtemp(tc->dir) != NULL);
    snprintf(tc->cert, sizeof(tc->cert), "%s/cert.pem", tc->dir);
    snprintf(tc->key, sizeof(tc->key), "%s/key.pem", tc->dir);
    gnutls_x509_privkey_t key;
    gnutls_x509_crt_t crt;
    CHECK_INT_EQ(gnutls_x509_privkey_init(&key), 0);
    CHECK_INT_EQ(gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
                                              GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
                 0);
    CHECK_INT_EQ(gnutls_x509_crt_init(&crt), 0);
    gnutls_x509_crt_set_version(crt, 3);
    unsigned char serial[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    gnutls_x509_crt_set_serial(crt, serial, sizeof(serial));
    time_t now = time(NULL);
    gnutls_x509_crt_set_activation_time(crt, now - 3600);
    gnutls_x509_crt_set_expiration_time(crt, now + 3600);
    CHECK_INT_EQ(gnutls_x509_crt_set_dn(crt, "CN=localhost", NULL), 0);
    gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, "localhost", 9,
                                         GNUTLS_FSAN_APPEND);
    gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, "\x7f\x00\x00\x01", 4,
                                         GNUTLS_FSAN_APPEND);
    CHECK_INT_EQ(gnutls_x509_crt_set_key(crt, key), 0);
    CHECK_INT_EQ(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0), 0);
    gnutls_datum_t pem;
    CHECK_INT_EQ(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &pem), 0);
    test_cert_write(tc->cert, &pem);
    gnutls_free(pem.data);
    CHECK_INT_EQ(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &pem), 0);
    test_cert_write(tc->key, &pem);
    gnutls_free(pem.data);
    gnutls_x509_crt_deinit(crt);
    gnutls_x509_privkey_deinit(key);
}

static void test_cert_remove(struct test_cert *tc)
{
    unlink(tc->cert);
    unlink(tc->key);
    rmdir(tc->dir);
}

#endif
