/* identity: Ed25519 derivation (RFC 8032 vector), EndpointId text forms and parse errors. */
#include "identity/identity.h"
#include "util/error.h"

#include "test.h"

#include <sodium.h>

static void hex(uint8_t *out, size_t n, const char *h)
{
    CHECK(sodium_hex2bin(out, n, h, strlen(h), NULL, NULL, NULL) == 0);
}

static void test_rfc8032_vector(void)
{
    /* RFC 8032 section 7.1, TEST 1: the 32-byte secret is the seed. */
    uint8_t secret[32], want[32], pub[32];
    hex(secret, 32, "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    hex(want, 32, "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    CHECK_INT_EQ(tun_identity_public(pub, secret), 0);
    CHECK_MEM_EQ(pub, want, 32);

    /* Its EndpointId, cross-checked with Python: base64.b32encode(pub).lower().rstrip("="). */
    char id[TUN_ENDPOINT_ID_LEN + 1];
    CHECK_INT_EQ(tun_endpoint_id_format(id, pub), TUN_ENDPOINT_ID_LEN);
    CHECK_STR_EQ(id, "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena");

    uint8_t back[32];
    CHECK_INT_EQ(tun_endpoint_id_parse(back, id, 52, NULL), 0);
    CHECK_MEM_EQ(back, pub, 32);
    memset(back, 0, 32);
    CHECK_INT_EQ(tun_endpoint_id_parse(back, "25NJQAMCWEFLPVKL73J4SZAHHIHOC4XT3KTCGJNPAINGR5YHKENA",
                                       52, NULL),
                 0);
    CHECK_MEM_EQ(back, pub, 32);
    memset(back, 0, 32);
    CHECK_INT_EQ(
        tun_endpoint_id_parse(
            back, "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", 64, NULL),
        0);
    CHECK_MEM_EQ(back, pub, 32);
    memset(back, 0, 32);
    CHECK_INT_EQ(
        tun_endpoint_id_parse(
            back, "D75A980182B10AB7D54BFED3C964073A0EE172F3DAA62325AF021A68F707511A", 64, NULL),
        0);
    CHECK_MEM_EQ(back, pub, 32);
}

static void test_generate_round_trip(void)
{
    uint8_t prev[32] = {0};
    for (int i = 0; i < 200; i++) {
        uint8_t secret[32], pub[32], back[32], again[32];
        CHECK_INT_EQ(tun_identity_generate(secret), 0);
        CHECK(memcmp(secret, prev, 32) != 0);
        memcpy(prev, secret, 32);
        CHECK_INT_EQ(tun_identity_public(pub, secret), 0);
        CHECK_INT_EQ(tun_identity_public(again, secret), 0);
        CHECK_MEM_EQ(pub, again, 32); /* deterministic */

        char id[TUN_ENDPOINT_ID_LEN + 1];
        CHECK_INT_EQ(tun_endpoint_id_format(id, pub), 52);
        CHECK_INT_EQ(strlen(id), 52);
        CHECK_INT_EQ(tun_endpoint_id_parse(back, id, 52, NULL), 0);
        CHECK_MEM_EQ(back, pub, 32);

        char hx[65];
        sodium_bin2hex(hx, sizeof hx, pub, 32);
        CHECK_INT_EQ(tun_endpoint_id_parse(back, hx, 64, NULL), 0);
        CHECK_MEM_EQ(back, pub, 32);
    }
}

static void test_parse_errors(void)
{
    const char *id = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena";
    uint8_t pub[32], untouched[32];
    memset(pub, 0xaa, 32);
    memset(untouched, 0xaa, 32);
    size_t pos = 99;

    CHECK_INT_EQ(tun_endpoint_id_parse(pub, id, 51, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_endpoint_id_parse(pub, id, 0, NULL), TUN_ELENGTH);
    CHECK_INT_EQ(tun_endpoint_id_parse(pub, "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenaa",
                                       53, NULL),
                 TUN_ELENGTH);
    CHECK_INT_EQ(tun_endpoint_id_parse(pub, "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhke0a",
                                       52, &pos),
                 TUN_EFORMAT);
    CHECK_INT_EQ(pos, 50);
    CHECK_INT_EQ(tun_endpoint_id_parse(
                     pub, "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhken=", 52, &pos),
                 TUN_EINVAL);
    CHECK_INT_EQ(pos, 51);
    /* The last character of 52 carries 4 unused bits: 'a' (0) is canonical, 'b' (1) is not. */
    CHECK_INT_EQ(tun_endpoint_id_parse(pub, "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenb",
                                       52, &pos),
                 TUN_ERANGE);
    CHECK_INT_EQ(
        tun_endpoint_id_parse(
            pub, "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511g", 64, &pos),
        TUN_EFORMAT);
    CHECK_INT_EQ(pos, 63);
    CHECK_INT_EQ(
        tun_endpoint_id_parse(
            pub, "x75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", 64, &pos),
        TUN_EFORMAT);
    CHECK_INT_EQ(pos, 0);

    /* Not usable public keys: the identity point, a point of order 4, a non-point. */
    CHECK_INT_EQ(
        tun_endpoint_id_parse(
            pub, "0100000000000000000000000000000000000000000000000000000000000000", 64, NULL),
        TUN_ECRYPTO);
    CHECK_INT_EQ(
        tun_endpoint_id_parse(
            pub, "0000000000000000000000000000000000000000000000000000000000000000", 64, NULL),
        TUN_ECRYPTO);
    CHECK_INT_EQ(
        tun_endpoint_id_parse(
            pub, "0200000000000000000000000000000000000000000000000000000000000000", 64, NULL),
        TUN_ECRYPTO);
    CHECK_MEM_EQ(pub, untouched, 32); /* never written on failure */

    /* Most single-character typos in a real id are caught by the point check alone. */
    int caught = 0, tried = 0;
    for (int p = 0; p < 51; p++) {
        char t[53];
        memcpy(t, id, 53);
        t[p] = t[p] == 'q' ? 'r' : 'q';
        tried++;
        caught += tun_endpoint_id_parse(pub, t, 52, NULL) == TUN_ECRYPTO;
    }
    CHECK(caught > 0 && caught <= tried);
}

int main(void)
{
    if (sodium_init() < 0)
        return 2;
    test_rfc8032_vector();
    test_generate_round_trip();
    test_parse_errors();
    return TEST_DONE();
}
