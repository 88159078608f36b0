#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test/support/signature_fixture.h"

int sig_setup(void **state)
{
    *state = kiln_signature_new("add", NULL);
    return *state == NULL ? -1 : 0;
}

int sig_teardown(void **state)
{
    kiln__alloc_fail_after(-1);
    kiln_signature_free(*state);
    return 0;
}

void assert_same_double(double a, double b)
{
    assert_memory_equal(&a, &b, sizeof(a)); /* tells -0.0 from 0.0 */
}

/* ---- one argument of each of the 29 types, in enum order --------------- */

const bool sample_bools[3] = {true, false, true};
const char *const sample_strings[3] = {"", "a", UTF8S};
static const int64_t ints[] = {-3, 0, 7};
static const uint64_t uints[] = {0, 9, 65535};
static const uint8_t octets[] = {0, 1, 0x80, 0xff, 0};
static const double floats[] = {0.5, -0.0, 1e30};

/* Each add must leave the count alone on failure (checked here, since the
 * allocation walk calls this with failures injected). */
#define ADD(call)                                                    \
    do {                                                             \
        size_t before = kiln_signature_arg_count(sig);               \
        kiln_err rc_ = (call);                                       \
        if (rc_ != KILN_OK) {                                        \
            assert_int_equal(kiln_signature_arg_count(sig), before); \
            assert_int_equal(err->code, rc_);                        \
            return rc_;                                              \
        }                                                            \
        assert_int_equal(kiln_signature_arg_count(sig), before + 1); \
    } while (0)

kiln_err add_every_type(kiln_signature *sig, const char *name, kiln_error *err)
{
    ADD(kiln_signature_add_arg_bool(sig, name, true, err));
    for (int t = KILN_TYPE_INT; t <= KILN_TYPE_INT64; t++)
        ADD(kiln_signature_add_arg_int(sig, name, (kiln_type)t, 7, err));
    for (int t = KILN_TYPE_UINT; t <= KILN_TYPE_UINT64; t++)
        ADD(kiln_signature_add_arg_uint(sig, name, (kiln_type)t, 8, err));
    ADD(kiln_signature_add_arg_float(sig, name, KILN_TYPE_FLOAT32, 0.1, err));
    ADD(kiln_signature_add_arg_float64(sig, name, 0.1, err));
    ADD(kiln_signature_add_arg_string(sig, name, UTF8S, err));
    ADD(kiln_signature_add_arg_bool_slice(sig, name, sample_bools, 3, err));
    for (int t = KILN_TYPE_INT_SLICE; t <= KILN_TYPE_INT64_SLICE; t++)
        ADD(kiln_signature_add_arg_int_slice(sig, name, (kiln_type)t, ints, 3,
                                             err));
    ADD(kiln_signature_add_arg_uint_slice(sig, name, KILN_TYPE_UINT_SLICE,
                                          uints, 3, err));
    ADD(kiln_signature_add_arg_uint8_slice(sig, name, octets, 5, err));
    for (int t = KILN_TYPE_UINT16_SLICE; t <= KILN_TYPE_UINT64_SLICE; t++)
        ADD(kiln_signature_add_arg_uint_slice(sig, name, (kiln_type)t, uints, 3,
                                              err));
    ADD(kiln_signature_add_arg_float_slice(sig, name, KILN_TYPE_FLOAT32_SLICE,
                                           floats, 3, err));
    ADD(kiln_signature_add_arg_float_slice(sig, name, KILN_TYPE_FLOAT64_SLICE,
                                           floats, 3, err));
    ADD(kiln_signature_add_arg_string_slice(sig, name, sample_strings, 3, err));
    ADD(kiln_signature_add_arg_bytes(sig, name, octets, 5, err));
    return KILN_OK;
}
