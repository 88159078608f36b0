/* The cJSON trees of values kept verbatim (unknown keys, Headers,
 * machinery's callbacks), built from text the reader has already checked.
 *
 * Each node is a single allocation: the cJSON struct, then its key, then
 * its text (a string decoded, a number as written). cJSON_StringIsConst
 * and, on scalars, cJSON_IsReference tell cJSON_Delete not to free the
 * two strings apart. That halves the allocations of a tree and keeps a
 * node at about 64 bytes plus its text, which is what the decoder's
 * budget counts (KILN__JSON_NODE_COST). Both walks are iterative on a
 * fixed stack. */
#include "task/codec.h"

#include <string.h>

#define STACK_MAX (KILN__JSON_MAX_DEPTH + 2)

/* A node of `type` with the key key[0..key_len) and the text
 * text[0..text_len), each decoded when its `esc` says so; a NULL key or
 * text is left out. */
static cJSON *node(int type, const char *key, size_t key_len, bool key_esc,
                   const char *text, size_t text_len, bool text_esc)
{
    size_t size = sizeof(cJSON) + (key != NULL ? key_len + 1 : 0) +
                  (text != NULL ? text_len + 1 : 0);
    cJSON *it = cJSON_malloc(size);
    char *p;

    if (it == NULL)
        return NULL;
    memset(it, 0, sizeof(*it));
    it->type = type;
    p = (char *)(it + 1);
    if (key != NULL) {
        it->string = p;
        p += kiln__json_unescape(key, key_len, key_esc, p, key_len + 1) + 1;
        it->type |= cJSON_StringIsConst;
    }
    if (text != NULL) {
        it->valuestring = p;
        (void)kiln__json_unescape(text, text_len, text_esc, p, text_len + 1);
        it->type |= cJSON_IsReference;
    }
    return it;
}

/* The node for the value at r->pos; a container's opening bracket is
 * consumed, a scalar wholly. */
static kiln_err one(kiln__reader *r, const kiln__key *k, cJSON **out,
                    kiln_error *err)
{
    const char *key = k->raw, *at = (const char *)r->s + r->pos;
    unsigned char c = r->s[r->pos];
    size_t len;
    bool esc;

    *out = NULL;
    if (c == '{' || c == '[') {
        r->pos++;
        *out = node(c == '{' ? cJSON_Object : cJSON_Array, key, k->raw_len,
                    k->esc, NULL, 0, false);
    } else if (c == '"') {
        if (!kiln__rd_string(r, &len, &esc))
            return kiln__rd_fail(r, "kept value", err);
        *out = node(cJSON_String, key, k->raw_len, k->esc, at + 1, len, esc);
    } else if (c == 't' || c == 'f' || c == 'n') {
        if (!kiln__rd_literal(r, c == 't'   ? "true"
                                 : c == 'f' ? "false"
                                            : "null"))
            return kiln__rd_fail(r, "kept value", err);
        *out = node(c == 't'   ? cJSON_True
                    : c == 'f' ? cJSON_False
                               : cJSON_NULL,
                    key, k->raw_len, k->esc, NULL, 0, false);
    } else {
        if (!kiln__rd_number(r))
            return kiln__rd_fail(r, "kept value", err);
        *out = node(cJSON_Raw, key, k->raw_len, k->esc, at,
                    (size_t)((const char *)r->s + r->pos - at), false);
    }
    return *out != NULL ? KILN_OK
                        : kiln__fail(err, KILN_ENOMEM, "keeping a value");
}

/* After a value inside `parent`: a comma (then, in an object, the next
 * key into *k) or the close; *closed says which. */
static bool next(kiln__reader *r, const cJSON *parent, kiln__key *k,
                 bool *closed)
{
    unsigned char c;

    kiln__rd_ws(r);
    if (r->pos >= r->n)
        return false;
    c = r->s[r->pos++];
    *closed = c == '}' || c == ']';
    if (*closed || c != ',')
        return *closed;
    kiln__rd_ws(r);
    return !cJSON_IsObject(parent) || kiln__rd_key(r, k);
}

/* Right after an opening bracket: the close of an empty container, or
 * (in an object) the first key. */
static bool first(kiln__reader *r, const cJSON *parent, kiln__key *k,
                  bool *closed)
{
    kiln__rd_ws(r);
    if (r->pos >= r->n)
        return false;
    *closed = r->s[r->pos] == '}' || r->s[r->pos] == ']';
    if (*closed) {
        r->pos++;
        return true;
    }
    return !cJSON_IsObject(parent) || kiln__rd_key(r, k);
}

kiln_err kiln__json_build(kiln__reader *r, const char *key, size_t key_len,
                          bool key_esc, cJSON **out, kiln_error *err)
{
    cJSON *stack[STACK_MAX], *root = NULL, *it;
    kiln__key k = {.raw = key, .raw_len = key_len, .esc = key_esc};
    size_t sp = 0;
    bool closed, ok;
    kiln_err rc;

    *out = NULL;
    for (;;) {
        kiln__rd_ws(r);
        if (r->pos >= r->n) {
            rc = kiln__rd_fail(r, "kept value", err);
            goto fail;
        }
        if ((rc = one(r, &k, &it, err)) != KILN_OK)
            goto fail;
        k.raw = NULL;
        if (sp == 0)
            root = it;
        else
            cJSON_AddItemToArray(stack[sp - 1], it);
        closed = true;
        if (cJSON_IsObject(it) || cJSON_IsArray(it)) {
            if (sp == STACK_MAX)
                goto bad;
            stack[sp++] = it;
            if (!first(r, it, &k, &closed))
                goto bad;
            sp -= closed;
        }
        /* A finished value: close containers until one goes on. */
        while (closed && sp > 0) {
            ok = next(r, stack[sp - 1], &k, &closed);
            if (!ok)
                goto bad;
            sp -= closed;
        }
        if (sp == 0 && closed) {
            *out = root;
            return KILN_OK;
        }
    }
bad:
    rc = kiln__rd_fail(r, "kept value", err);
fail:
    cJSON_Delete(root);
    return rc;
}

/* One node like `src`, with no children or siblings. */
static cJSON *copy_node(const cJSON *src)
{
    const char *text =
        (src->type & 0xFF) == cJSON_String || (src->type & 0xFF) == cJSON_Raw
            ? src->valuestring
            : NULL;
    cJSON *it = node(src->type & 0xFF, src->string,
                     src->string != NULL ? strlen(src->string) : 0, false, text,
                     text != NULL ? strlen(text) : 0, false);

    if (it != NULL) {
        it->valueint = src->valueint;
        it->valuedouble = src->valuedouble;
    }
    return it;
}

cJSON *kiln__json_copy(const cJSON *item)
{
    struct {
        const cJSON *next; /* the sibling to copy after this subtree */
        cJSON *parent;     /* ... into this node */
    } stack[STACK_MAX];
    cJSON *root, *parent, *it;
    const cJSON *c;
    size_t sp = 0;

    if (item == NULL || (root = copy_node(item)) == NULL)
        return NULL;
    parent = root;
    c = item->child;
    while (c != NULL || sp > 0) {
        if (c == NULL) {
            sp--;
            c = stack[sp].next;
            parent = stack[sp].parent;
            continue;
        }
        if ((it = copy_node(c)) == NULL)
            goto fail;
        cJSON_AddItemToArray(parent, it);
        if (c->child == NULL) {
            c = c->next;
            continue;
        }
        if (sp == STACK_MAX)
            goto fail;
        stack[sp].next = c->next;
        stack[sp++].parent = parent;
        parent = it;
        c = c->child;
    }
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}
