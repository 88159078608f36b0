/* libFuzzer target for the JSON codec (make fuzz).
 *
 * Any input: decoding either succeeds or fails with a codec error, never
 * with KILN_ENOMEM (no allocation failure is injected here). The decoder
 * reads and checks the text in one pass, so it must agree with the
 * whole-text check (kiln__json_validate): a body it accepts is JSON, and
 * one it calls "not JSON" is not. On success the signature is encoded in
 * both dialects, decoded again and re-encoded: the second encoding must
 * be byte for byte the first. The input is also tried as a paota
 * header-mode body, and that round trip must hold too. Any broken promise
 * traps. */
#include "task/codec.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void must(bool ok)
{
    if (!ok)
        __builtin_trap();
}

static void check_failure(kiln_err rc, const kiln_error *err)
{
    must(rc == KILN_ECODEC || rc == KILN_ETOOBIG);
    must(err->code == rc && err->message[0] != '\0');
}

/* encode(decode(encode(sig))) == encode(sig) in `dialect`. */
static void stable_json(const kiln_signature *sig, kiln_dialect dialect)
{
    kiln_signature *again = NULL;
    char *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;

    must(kiln_signature_to_json(sig, dialect, &a, &alen, NULL) == KILN_OK);
    must(strlen(a) == alen);
    must(kiln_signature_from_json(a, alen, 0, &again, NULL) == KILN_OK);
    must(again->dialect == dialect || dialect == KILN_DIALECT_MACHINERY);
    must(kiln_signature_to_json(again, dialect, &b, &blen, NULL) == KILN_OK);
    must(alen == blen && memcmp(a, b, alen) == 0);
    kiln_free(a);
    kiln_free(b);
    kiln_signature_free(again);
}

/* The header-mode round trip of `sig`. Header mode carries a raw body
 * alone: a signature that also has typed arguments is refused (they would
 * be lost), and nothing else is. */
static void stable_raw(const kiln_signature *sig)
{
    kiln_header *h = NULL, *h2 = NULL;
    kiln_signature *again = NULL;
    char *body = NULL, *body2 = NULL;
    size_t n = 0, n2 = 0, len = 0, len2 = 0;
    kiln_err rc = kiln_signature_to_raw(sig, &body, &len, &h, &n, NULL);

    if (rc == KILN_EINVAL && kiln_signature_raw_body(sig, NULL) != NULL &&
        kiln_signature_arg_count(sig) > 0)
        return;
    must(rc == KILN_OK);
    if (n > 0) {
        must(kiln_signature_from_raw(body, len, h, n, 0, &again, NULL) ==
             KILN_OK);
        must(kiln_signature_to_raw(again, &body2, &len2, &h2, &n2, NULL) ==
             KILN_OK);
        must(len == len2 && memcmp(body, body2, len) == 0 && n == n2);
        for (size_t i = 0; i < n; i++)
            must(strcmp(h[i].key, h2[i].key) == 0 &&
                 strcmp(h[i].value, h2[i].value) == 0);
    }
    kiln_free(body);
    kiln_free(body2);
    kiln_free(h);
    kiln_free(h2);
    kiln_signature_free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const kiln_header hdr[] = {
        {"task_name", "fuzz"}, {"uuid", "task_fuzz"}, {"eta", "1700000000"}};
    const char *text = (const char *)data;
    kiln_signature *sig = NULL;
    kiln_error err = {0};
    kiln_err rc;

    rc = kiln_signature_from_json(text, size, 0, &sig, &err);
    if (rc != KILN_OK) {
        check_failure(rc, &err);
        if (strncmp(err.message, "body: not JSON (", 16) == 0)
            must(kiln__json_validate(text, size, "body", NULL) != KILN_OK);
    } else {
        must(kiln__json_validate(text, size, "body", NULL) == KILN_OK);
        stable_json(sig, KILN_DIALECT_MACHINERY);
        stable_json(sig, KILN_DIALECT_PAOTA);
        stable_raw(sig);
        kiln_signature_free(sig);
        sig = NULL;
    }
    rc = kiln_signature_from_raw(text, size, hdr, KILN__ARRAY_LEN(hdr), 0, &sig,
                                 &err);
    if (rc != KILN_OK) {
        check_failure(rc, &err);
        return 0;
    }
    stable_raw(sig);
    stable_json(sig, KILN_DIALECT_PAOTA);
    kiln_signature_free(sig);
    return 0;
}
