/* A user program built against the installed library with pkg-config:
 * builds a signature with three typed args, encodes it, decodes it back
 * and checks the values. Exits 0 when all is well. */
#include <kiln.h>

#include <stdio.h>
#include <string.h>

int main(void)
{
    kiln_error err;
    kiln_signature *sig = kiln_signature_new("add", &err), *back = NULL;
    char *json = NULL;
    size_t len = 0;
    int64_t a = 0;
    double b = 0;
    const char *who = NULL;

    if (sig == NULL ||
        kiln_signature_add_arg_int64(sig, "a", INT64_MAX, &err) != KILN_OK ||
        kiln_signature_add_arg_float64(sig, "b", 0.1, &err) != KILN_OK ||
        kiln_signature_add_arg_string(sig, "who", "wörld", &err) != KILN_OK ||
        kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &json, &len,
                               &err) != KILN_OK ||
        kiln_signature_from_json(json, len, 0, &back, &err) != KILN_OK ||
        kiln_signature_arg_int64(back, 0, &a, &err) != KILN_OK ||
        kiln_signature_arg_double(back, 1, &b, &err) != KILN_OK ||
        kiln_signature_arg_string(back, 2, &who, &err) != KILN_OK) {
        fprintf(stderr, "app: %s: %s\n", kiln_strerror(err.code),
                err.message);
        return 1;
    }
    if (a != INT64_MAX || b != 0.1 || strcmp(who, "wörld") != 0 ||
        strcmp(kiln_signature_uuid(sig), kiln_signature_uuid(back)) != 0) {
        fprintf(stderr, "app: values differ after the round trip\n");
        return 1;
    }
    printf("app: kiln %s round trip ok: %s\n", kiln_version_string(), json);
    kiln_free(json);
    kiln_signature_free(back);
    kiln_signature_free(sig);
    return 0;
}
