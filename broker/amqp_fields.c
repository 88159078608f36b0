/* rabbitmq-c's field tables to kiln's typed headers (core/headers.h) and
 * back: a delivery keeps its headers as they came, a publish writes them
 * as they are. Both walks keep their own stack (no recursion); values
 * nested deeper than KILN__HVAL_MAX_DEPTH become void. */
#define KILN__AMQP_INTERNAL
#include "broker/amqp.h"

#include <string.h>

/* ---- kinds -------------------------------------------------------------- */

static kiln__htype type_in(uint8_t kind)
{
    switch (kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
        return KILN__HV_BOOL;
    case AMQP_FIELD_KIND_I8:
        return KILN__HV_I8;
    case AMQP_FIELD_KIND_U8:
        return KILN__HV_U8;
    case AMQP_FIELD_KIND_I16:
        return KILN__HV_I16;
    case AMQP_FIELD_KIND_U16:
        return KILN__HV_U16;
    case AMQP_FIELD_KIND_I32:
        return KILN__HV_I32;
    case AMQP_FIELD_KIND_U32:
        return KILN__HV_U32;
    case AMQP_FIELD_KIND_I64:
        return KILN__HV_I64;
    case AMQP_FIELD_KIND_U64:
        return KILN__HV_U64;
    case AMQP_FIELD_KIND_F32:
        return KILN__HV_F32;
    case AMQP_FIELD_KIND_F64:
        return KILN__HV_F64;
    case AMQP_FIELD_KIND_DECIMAL:
        return KILN__HV_DECIMAL;
    case AMQP_FIELD_KIND_TIMESTAMP:
        return KILN__HV_TIMESTAMP;
    case AMQP_FIELD_KIND_UTF8:
        return KILN__HV_UTF8;
    case AMQP_FIELD_KIND_BYTES:
        return KILN__HV_BYTES;
    case AMQP_FIELD_KIND_TABLE:
        return KILN__HV_TABLE;
    case AMQP_FIELD_KIND_ARRAY:
        return KILN__HV_ARRAY;
    default:
        return KILN__HV_VOID;
    }
}

static const uint8_t kind_out[] = {
    [KILN__HV_VOID] = AMQP_FIELD_KIND_VOID,
    [KILN__HV_BOOL] = AMQP_FIELD_KIND_BOOLEAN,
    [KILN__HV_I8] = AMQP_FIELD_KIND_I8,
    [KILN__HV_U8] = AMQP_FIELD_KIND_U8,
    [KILN__HV_I16] = AMQP_FIELD_KIND_I16,
    [KILN__HV_U16] = AMQP_FIELD_KIND_U16,
    [KILN__HV_I32] = AMQP_FIELD_KIND_I32,
    [KILN__HV_U32] = AMQP_FIELD_KIND_U32,
    [KILN__HV_I64] = AMQP_FIELD_KIND_I64,
    [KILN__HV_U64] = AMQP_FIELD_KIND_U64,
    [KILN__HV_F32] = AMQP_FIELD_KIND_F32,
    [KILN__HV_F64] = AMQP_FIELD_KIND_F64,
    [KILN__HV_DECIMAL] = AMQP_FIELD_KIND_DECIMAL,
    [KILN__HV_TIMESTAMP] = AMQP_FIELD_KIND_TIMESTAMP,
    [KILN__HV_UTF8] = AMQP_FIELD_KIND_UTF8,
    [KILN__HV_BYTES] = AMQP_FIELD_KIND_BYTES,
    [KILN__HV_TABLE] = AMQP_FIELD_KIND_TABLE,
    [KILN__HV_ARRAY] = AMQP_FIELD_KIND_ARRAY,
};

/* ---- in ----------------------------------------------------------------- */

typedef struct in_level {
    const amqp_table_entry_t *te; /* a table's entries, or */
    const amqp_field_value_t *av; /* an array's items */
    size_t n, i;
    kiln__hdr *tf; /* where they go (NULL when counting) */
    kiln__hval *dv;
} in_level;

static void scalar_in(const amqp_field_value_t *s, kiln__hval *d)
{
    switch (s->kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
        d->v.b = s->value.boolean != 0;
        break;
    case AMQP_FIELD_KIND_I8:
        d->v.i = (int64_t)s->value.i8;
        break;
    case AMQP_FIELD_KIND_I16:
        d->v.i = s->value.i16;
        break;
    case AMQP_FIELD_KIND_I32:
        d->v.i = s->value.i32;
        break;
    case AMQP_FIELD_KIND_I64:
        d->v.i = s->value.i64;
        break;
    case AMQP_FIELD_KIND_U8:
        d->v.u = s->value.u8;
        break;
    case AMQP_FIELD_KIND_U16:
        d->v.u = s->value.u16;
        break;
    case AMQP_FIELD_KIND_U32:
        d->v.u = s->value.u32;
        break;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        d->v.u = s->value.u64;
        break;
    case AMQP_FIELD_KIND_F32:
        d->v.f32 = s->value.f32;
        break;
    case AMQP_FIELD_KIND_F64:
        d->v.f64 = s->value.f64;
        break;
    case AMQP_FIELD_KIND_DECIMAL:
        d->v.dec.decimals = s->value.decimal.decimals;
        d->v.dec.value = s->value.decimal.value;
        break;
    default:
        break;
    }
}

/* Value `s` into `d` (NULL when counting); a table or an array pushes a
 * level onto st[*top]. */
static void value_in(kiln__bump *b, const amqp_field_value_t *s, kiln__hval *d,
                     in_level *st, int *top)
{
    kiln__hval v = {.type = type_in(s->kind)};
    in_level *l = &st[*top];
    int n;

    if ((v.type == KILN__HV_TABLE || v.type == KILN__HV_ARRAY) &&
        *top == KILN__HVAL_MAX_DEPTH)
        v.type = KILN__HV_VOID;
    if (v.type == KILN__HV_UTF8 || v.type == KILN__HV_BYTES) {
        v.v.str.p = kiln__bump_str(b, s->value.bytes.bytes, s->value.bytes.len);
        v.v.str.len = s->value.bytes.len;
    } else if (v.type == KILN__HV_TABLE) {
        n = s->value.table.num_entries;
        *l = (in_level){.te = s->value.table.entries,
                        .n = n > 0 ? (size_t)n : 0};
        l->tf =
            kiln__bump_take(b, l->n * sizeof(kiln__hdr), _Alignof(kiln__hdr));
        v.v.table.items = l->tf;
        v.v.table.n = l->n;
        (*top)++;
    } else if (v.type == KILN__HV_ARRAY) {
        n = s->value.array.num_entries;
        *l = (in_level){.av = s->value.array.entries,
                        .n = n > 0 ? (size_t)n : 0};
        l->dv =
            kiln__bump_take(b, l->n * sizeof(kiln__hval), _Alignof(kiln__hval));
        v.v.array.items = l->dv;
        v.v.array.n = l->n;
        (*top)++;
    } else {
        scalar_in(s, &v);
    }
    if (d != NULL)
        *d = v;
}

kiln__hdr *kiln__amqp_fields_in(kiln__bump *b, const amqp_table_t *t)
{
    in_level st[KILN__HVAL_MAX_DEPTH];
    size_t n = t != NULL && t->num_entries > 0 ? (size_t)t->num_entries : 0;
    kiln__hdr *out = kiln__bump_take(b, n * sizeof(*out), _Alignof(kiln__hdr));
    int top = 1;

    st[0] = (in_level){.te = n > 0 ? t->entries : NULL, .n = n, .tf = out};
    while (top > 0) {
        in_level *l = &st[top - 1];
        size_t at = l->i;
        kiln__hval *d = NULL;

        if (at >= l->n || (l->te == NULL && l->av == NULL)) {
            top--;
            continue;
        }
        l->i++;
        if (l->te != NULL) {
            const amqp_table_entry_t *e = &l->te[at];
            const char *k = kiln__bump_str(b, e->key.bytes, e->key.len);
            if (l->tf != NULL) {
                l->tf[at].key = k;
                d = &l->tf[at].value;
            }
            value_in(b, &e->value, d, st, &top);
        } else {
            value_in(b, &l->av[at], l->dv != NULL ? &l->dv[at] : NULL, st,
                     &top);
        }
    }
    return out;
}

/* ---- out ---------------------------------------------------------------- */

typedef struct out_level {
    const kiln__hdr *tf;  /* a table's entries, or */
    const kiln__hval *av; /* an array's items */
    size_t n, i;
    amqp_table_entry_t *te; /* where they go */
    amqp_field_value_t *dv;
} out_level;

static void scalar_out(const kiln__hval *s, amqp_field_value_t *d)
{
    switch (s->type) {
    case KILN__HV_BOOL:
        d->value.boolean = s->v.b;
        break;
    case KILN__HV_I8:
        d->value.i8 = (int8_t)s->v.i;
        break;
    case KILN__HV_I16:
        d->value.i16 = (int16_t)s->v.i;
        break;
    case KILN__HV_I32:
        d->value.i32 = (int32_t)s->v.i;
        break;
    case KILN__HV_I64:
        d->value.i64 = s->v.i;
        break;
    case KILN__HV_U8:
        d->value.u8 = (uint8_t)s->v.u;
        break;
    case KILN__HV_U16:
        d->value.u16 = (uint16_t)s->v.u;
        break;
    case KILN__HV_U32:
        d->value.u32 = (uint32_t)s->v.u;
        break;
    case KILN__HV_U64:
    case KILN__HV_TIMESTAMP:
        d->value.u64 = s->v.u;
        break;
    case KILN__HV_F32:
        d->value.f32 = s->v.f32;
        break;
    case KILN__HV_F64:
        d->value.f64 = s->v.f64;
        break;
    case KILN__HV_DECIMAL:
        d->value.decimal.decimals = s->v.dec.decimals;
        d->value.decimal.value = s->v.dec.value;
        break;
    case KILN__HV_UTF8:
    case KILN__HV_BYTES:
        d->value.bytes.len = s->v.str.len;
        d->value.bytes.bytes = (void *)(uintptr_t)s->v.str.p;
        break;
    default:
        break;
    }
}

/* The items of a table or an array (none without an items pointer, as
 * core/headers.c counts them). */
static bool nested_out(const kiln__hval *s, out_level *l, size_t size)
{
    bool table = s->type == KILN__HV_TABLE;
    const void *items =
        table ? (const void *)s->v.table.items : (const void *)s->v.array.items;

    l->n = items == NULL ? 0 : table ? s->v.table.n : s->v.array.n;
    l->i = 0;
    return l->n == 0 || l->n <= (size_t)INT32_MAX / size;
}

/* Value `s` into `d`; a table or an array gets its items from `pool` and
 * pushes a level onto st[*top]. False when the pool ran out. */
static bool value_out(amqp_pool_t *pool, const kiln__hval *s,
                      amqp_field_value_t *d, out_level *st, int *top)
{
    bool deep = *top == KILN__HVAL_MAX_DEPTH;
    out_level *l = &st[*top];

    memset(d, 0, sizeof(*d));
    d->kind = s->type <= KILN__HV_ARRAY ? kind_out[s->type]
                                        : (uint8_t)AMQP_FIELD_KIND_VOID;
    if (s->type == KILN__HV_TABLE && !deep) {
        *l = (out_level){.tf = s->v.table.items};
        if (!nested_out(s, l, sizeof(amqp_table_entry_t)) ||
            (l->n > 0 &&
             (l->te = amqp_pool_alloc(
                  pool, l->n * sizeof(amqp_table_entry_t))) == NULL))
            return false;
        d->value.table.num_entries = (int)l->n;
        d->value.table.entries = l->te;
        (*top)++;
    } else if (s->type == KILN__HV_ARRAY && !deep) {
        *l = (out_level){.av = s->v.array.items};
        if (!nested_out(s, l, sizeof(amqp_field_value_t)) ||
            (l->n > 0 &&
             (l->dv = amqp_pool_alloc(
                  pool, l->n * sizeof(amqp_field_value_t))) == NULL))
            return false;
        d->value.array.num_entries = (int)l->n;
        d->value.array.entries = l->dv;
        (*top)++;
    } else if (s->type == KILN__HV_TABLE || s->type == KILN__HV_ARRAY) {
        d->kind = AMQP_FIELD_KIND_VOID;
    } else {
        scalar_out(s, d);
    }
    return true;
}

kiln_err kiln__amqp_fields_out(amqp_pool_t *pool, const kiln__hdr *f, size_t n,
                               amqp_table_entry_t *out, kiln_error *err)
{
    out_level st[KILN__HVAL_MAX_DEPTH];
    int top = 1;

    st[0] = (out_level){.tf = f, .n = f != NULL ? n : 0, .te = out};
    while (top > 0) {
        out_level *l = &st[top - 1];
        size_t at = l->i;
        bool ok;

        if (at >= l->n ||
            (l->tf == NULL ? l->av == NULL || l->dv == NULL : l->te == NULL)) {
            top--;
            continue;
        }
        l->i++;
        if (l->tf != NULL) {
            const char *k = l->tf[at].key != NULL ? l->tf[at].key : "";
            l->te[at].key = amqp_cstring_bytes(k);
            ok = value_out(pool, &l->tf[at].value, &l->te[at].value, st, &top);
        } else {
            ok = value_out(pool, &l->av[at], &l->dv[at], st, &top);
        }
        if (!ok)
            return kiln__fail(err, KILN_ENOMEM, "headers: nested values");
    }
    return KILN_OK;
}
