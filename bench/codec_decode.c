/* codec_decode: the codec's share of a task's cost, without a broker:
 * decodes the benchmark's task body (the JSON kiln_bench sends) N times,
 * then encodes it N times (a sender's share). Run it under callgrind for
 * a repeatable count per decode and per encode:
 *
 *   valgrind --tool=callgrind build/plain/bench/codec_decode 20000
 *   (instructions in kiln_signature_from_json / N, and in
 *   kiln_signature_to_json / (N + 1))
 *
 * and plainly for a time per decode. Not part of the library.
 */
#include "bench.h"

#include <kiln.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 100000;
    char rec[BENCH_PAYLOAD_LEN + 1], *json = NULL;
    size_t len = 0;
    kiln_error err;
    kiln_signature *sig = kiln_signature_new("noop", &err);

    (void)bench_payload(rec, 1, bench_now_ns());
    if (sig == NULL ||
        kiln_signature_add_arg_string(sig, "user", rec, &err) != KILN_OK ||
        kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &json, &len,
                               &err) != KILN_OK) {
        fprintf(stderr, "codec_decode: %s\n", err.message);
        return 1;
    }
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        kiln_signature *back = NULL;
        if (kiln_signature_from_json(json, len, 0, &back, &err) != KILN_OK) {
            fprintf(stderr, "codec_decode: %s\n", err.message);
            return 1;
        }
        kiln_signature_free(back);
    }
    double ns = (double)(bench_now_ns() - t0) / (double)(n > 0 ? n : 1);
    printf("body=%zu bytes\ndecodes=%ld\nns_per_decode=%.0f\n", len, n, ns);
    t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        char *again = NULL;
        size_t again_len = 0;
        if (kiln_signature_to_json(sig, KILN_DIALECT_MACHINERY, &again,
                                   &again_len, &err) != KILN_OK) {
            fprintf(stderr, "codec_decode: %s\n", err.message);
            return 1;
        }
        kiln_free(again);
    }
    ns = (double)(bench_now_ns() - t0) / (double)(n > 0 ? n : 1);
    printf("encodes=%ld\nns_per_encode=%.0f\n", n, ns);
    kiln_free(json);
    kiln_signature_free(sig);
    return 0;
}
