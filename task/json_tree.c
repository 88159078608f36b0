/* Walks over cJSON trees: Go's map semantics for duplicate keys, and
 * writing a tree back out. Every walk is iterative on a fixed stack (trees
 * are at most KILN__JSON_MAX_DEPTH deep), so a hostile body cannot exhaust
 * the C stack. */
#include "task/codec.h"

#include <stdlib.h>
#include <string.h>

#define STACK_MAX (KILN__JSON_MAX_DEPTH + 2)

const char *kiln__json_kind(const cJSON *item)
{
    switch (item == NULL ? cJSON_NULL : item->type & 0xFF) {
    case cJSON_False:
    case cJSON_True:
        return "bool";
    case cJSON_Number:
    case cJSON_Raw:
        return "number";
    case cJSON_String:
        return "string";
    case cJSON_Array:
        return "array";
    case cJSON_Object:
        return "object";
    default:
        return "null";
    }
}

/* Folds one character of a key to ASCII lower case, treating U+212A
 * (E2 84 AA) as 'k' and U+017F (C5 BF) as 's', as Go's bytes.EqualFold
 * does; *len gets the bytes used. */
static int fold(const unsigned char *p, size_t *len)
{
    *len = 1;
    if (p[0] == 0xE2 && p[1] == 0x84 && p[2] == 0xAA) {
        *len = 3;
        return 'k';
    }
    if (p[0] == 0xC5 && p[1] == 0xBF) {
        *len = 2;
        return 's';
    }
    if (p[0] >= 'A' && p[0] <= 'Z')
        return p[0] - 'A' + 'a';
    return p[0];
}

bool kiln__key_match(const char *key, const char *field)
{
    const unsigned char *k = (const unsigned char *)key;
    const unsigned char *f = (const unsigned char *)field;
    size_t kl, fl;

    while (*k != '\0' && *f != '\0') {
        if (fold(k, &kl) != fold(f, &fl))
            return false;
        k += kl;
        f += fl;
    }
    return *k == '\0' && *f == '\0';
}

/* ---- duplicate keys ----------------------------------------------------- */

typedef struct kid {
    cJSON *item;
    size_t index;
} kid;

static int kid_cmp(const void *a, const void *b)
{
    const kid *x = a, *y = b;
    int c = strcmp(x->item->string != NULL ? x->item->string : "",
                   y->item->string != NULL ? y->item->string : "");

    if (c != 0)
        return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* The children of `obj` sorted by key, then by position. NULL with
 * *n = 0 for an empty object; NULL with *n > 0 when memory ran out. */
static kid *sorted_kids(const cJSON *obj, size_t *n)
{
    size_t count = 0;
    kid *v;

    for (const cJSON *c = obj->child; c != NULL; c = c->next)
        count++;
    *n = count;
    if (count == 0 || count > SIZE_MAX / sizeof(*v) ||
        (v = kiln__malloc(count * sizeof(*v))) == NULL)
        return NULL;
    count = 0;
    for (cJSON *c = obj->child; c != NULL; c = c->next, count++) {
        v[count].item = c;
        v[count].index = count;
    }
    qsort(v, count, sizeof(*v), kid_cmp);
    return v;
}

static bool same_key(const kid *a, const kid *b)
{
    return strcmp(a->item->string != NULL ? a->item->string : "",
                  b->item->string != NULL ? b->item->string : "") == 0;
}

/* Keeps the last of each run of equal keys. */
static kiln_err dedupe_object(cJSON *obj, kiln_error *err)
{
    size_t n;
    kid *v;

    if (obj->child == NULL || obj->child->next == NULL)
        return KILN_OK;
    if ((v = sorted_kids(obj, &n)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "sorting %zu keys", n);
    for (size_t i = 0; i + 1 < n; i++)
        if (same_key(&v[i], &v[i + 1]))
            cJSON_Delete(cJSON_DetachItemViaPointer(obj, v[i].item));
    kiln__free(v);
    return KILN_OK;
}

kiln_err kiln__json_dedupe(cJSON *obj, bool deep, kiln_error *err)
{
    cJSON *stack[STACK_MAX];
    cJSON *it = obj;
    size_t sp = 0;
    kiln_err rc;

    if (!deep)
        return obj != NULL && (obj->type & 0xFF) == cJSON_Object
                   ? dedupe_object(obj, err)
                   : KILN_OK;
    /* The walk never goes on to obj's own siblings. */
    while (it != NULL) {
        if ((it->type & 0xFF) == cJSON_Object &&
            (rc = dedupe_object(it, err)) != KILN_OK)
            return rc;
        if (it->child != NULL) {
            if (sp == STACK_MAX)
                return kiln__fail(err, KILN_ECODEC, "JSON nested too deep");
            stack[sp++] = it != obj ? it->next : NULL;
            it = it->child;
            continue;
        }
        it = it != obj ? it->next : NULL;
        while (it == NULL && sp > 0)
            it = stack[--sp];
    }
    return KILN_OK;
}

/* ---- writing a tree ----------------------------------------------------- */

typedef struct frame {
    const cJSON *node;
    const cJSON *next; /* document order: the next child */
    kid *kids;         /* sorted order (NULL: document order) */
    size_t i;
    size_t n;
    bool first;
} frame;

static bool is_object(const cJSON *it)
{
    return (it->type & 0xFF) == cJSON_Object;
}

static bool is_container(const cJSON *it)
{
    return is_object(it) || (it->type & 0xFF) == cJSON_Array;
}

static void put_scalar(kiln__buf *b, const cJSON *it)
{
    switch (it->type & 0xFF) {
    case cJSON_False:
        kiln__buf_puts(b, "false");
        break;
    case cJSON_True:
        kiln__buf_puts(b, "true");
        break;
    case cJSON_Number: /* only in trees built by hand, never after parse */
        kiln__json_float(b, it->valuedouble, 64);
        break;
    case cJSON_Raw:
        kiln__buf_puts(b, it->valuestring != NULL ? it->valuestring : "null");
        break;
    case cJSON_String:
        kiln__json_string(b, it->valuestring != NULL ? it->valuestring : "",
                          it->valuestring != NULL ? strlen(it->valuestring)
                                                  : 0);
        break;
    default:
        kiln__buf_puts(b, "null");
        break;
    }
}

/* The next child to write; in sorted order, of each run of equal keys
 * only the last (Go's map keeps the last value it decoded). */
static const cJSON *next_child(frame *f)
{
    const cJSON *c;

    if (f->kids == NULL) {
        if ((c = f->next) != NULL)
            f->next = c->next;
        return c;
    }
    while (f->i < f->n) {
        const kid *k = &f->kids[f->i++];

        if (f->i < f->n && same_key(k, &f->kids[f->i]))
            continue;
        return k->item;
    }
    return NULL;
}

static kiln_err open_container(kiln__buf *b, frame *stack, size_t *sp,
                               const cJSON *it, bool sort, kiln_error *err)
{
    frame *f;

    if (*sp == STACK_MAX)
        return kiln__fail(err, KILN_ECODEC,
                          "JSON nested deeper than %d "
                          "levels",
                          KILN__JSON_MAX_DEPTH);
    f = &stack[(*sp)++];
    memset(f, 0, sizeof(*f));
    f->node = it;
    f->next = it->child;
    f->first = true;
    kiln__buf_put(b, is_object(it) ? "{" : "[", 1);
    if (sort && is_object(it) && it->child != NULL &&
        (f->kids = sorted_kids(it, &f->n)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "sorting %zu keys", f->n);
    return KILN_OK;
}

kiln_err kiln__json_tree(kiln__buf *b, const cJSON *item, bool sort_keys,
                         kiln_error *err)
{
    frame stack[STACK_MAX];
    size_t sp = 0;
    kiln_err rc;
    const cJSON *c;
    frame *f;

    if (item == NULL || !is_container(item)) {
        if (item == NULL)
            kiln__buf_puts(b, "null");
        else
            put_scalar(b, item);
        return KILN_OK;
    }
    rc = open_container(b, stack, &sp, item, sort_keys, err);
    while (rc == KILN_OK && sp > 0) {
        f = &stack[sp - 1];
        if ((c = next_child(f)) == NULL) {
            kiln__buf_put(b, is_object(f->node) ? "}" : "]", 1);
            kiln__free(f->kids);
            sp--;
            continue;
        }
        if (!f->first)
            kiln__buf_put(b, ",", 1);
        f->first = false;
        if (is_object(f->node)) {
            const char *k = c->string != NULL ? c->string : "";

            kiln__json_string(b, k, strlen(k));
            kiln__buf_put(b, ":", 1);
        }
        if (is_container(c))
            rc = open_container(b, stack, &sp, c, sort_keys, err);
        else
            put_scalar(b, c);
    }
    while (sp > 0)
        kiln__free(stack[--sp].kids);
    return rc;
}
