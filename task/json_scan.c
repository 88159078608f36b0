/* The input side of the codec: a strict RFC 8259 scan of the body before
 * cJSON sees it, and the parse that turns numbers into exact text.
 *
 * cJSON is lenient where Go is not: it takes any byte up to space as
 * whitespace (NUL included), raw control bytes inside strings, leading
 * zeros ("01"), "1." and "-.5", and stops quietly after the first value.
 * The scan rejects all of these, as Go's decoder does, so cJSON only ever
 * sees text both agree on. */
#include "task/codec.h"

#include <string.h>

typedef struct scanner {
    const unsigned char *s;
    size_t n;
    size_t pos;
    const char *why; /* NULL: generic "not JSON" */
} scanner;

/* Task bodies are nearly all ASCII, so eight bytes are checked at once
 * (no high bit set) before the byte-wise path; memcpy keeps the load
 * legal at any alignment. */
#define HIGH_BITS 0x8080808080808080ULL

size_t kiln__utf8_error_at(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, len;

    while (i < n) {
        uint64_t w;
        if (n - i >= 8 && (memcpy(&w, p + i, 8), (w & HIGH_BITS) == 0)) {
            i += 8;
            continue;
        }
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        len = p[i] >= 0xF0 ? 4 : p[i] >= 0xE0 ? 3 : 2;
        if (len > n - i || !kiln__utf8_valid(s + i, len))
            return i;
        i += len;
    }
    return n;
}

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_ws(scanner *sc)
{
    while (sc->pos < sc->n && is_ws(sc->s[sc->pos]))
        sc->pos++;
}

static int hex_val(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Reads the 4 hex digits of a \u escape at pos; -1 if malformed. */
static long hex4(scanner *sc)
{
    long v = 0;

    if (sc->n - sc->pos < 4)
        return -1;
    for (int k = 0; k < 4; k++) {
        int h = hex_val(sc->s[sc->pos + (size_t)k]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    sc->pos += 4;
    return v;
}

/* A \u escape (pos after the 'u'). \u0000 cannot live in a C string, and
 * cJSON refuses unpaired surrogates, so both are refused here (Go
 * accepts them, the latter as U+FFFD). */
static bool scan_unicode(scanner *sc)
{
    long u = hex4(sc), lo;

    if (u < 0)
        return false;
    if (u == 0) {
        sc->why = "\\u0000 in a string is not supported";
        return false;
    }
    if (u >= 0xDC00 && u <= 0xDFFF) {
        sc->why = "unpaired UTF-16 surrogate";
        return false;
    }
    if (u < 0xD800 || u > 0xDBFF)
        return true;
    if (sc->n - sc->pos < 2 || sc->s[sc->pos] != '\\' ||
        sc->s[sc->pos + 1] != 'u') {
        sc->why = "unpaired UTF-16 surrogate";
        return false;
    }
    sc->pos += 2;
    lo = hex4(sc);
    if (lo < 0xDC00 || lo > 0xDFFF) {
        sc->why = lo < 0 ? NULL : "unpaired UTF-16 surrogate";
        return false;
    }
    return true;
}

/* Whether any byte of w is below 0x20, a quote or a backslash: the exact
 * "has a zero byte" and "has a byte less than n" bit tricks on 8 bytes. */
#define ONES        0x0101010101010101ULL
#define HAS_ZERO(v) (((v)-ONES) & ~(v)&HIGH_BITS)

static bool special8(uint64_t w)
{
    return ((w - 0x20 * ONES) & ~w & HIGH_BITS) != 0 ||
           HAS_ZERO(w ^ ('"' * ONES)) != 0 || HAS_ZERO(w ^ ('\\' * ONES)) != 0;
}

/* Moves pos over the plain bytes of a string (neither a quote, a
 * backslash nor a control byte), eight at a time where it can: the bulk of
 * every body. */
static void skip_plain(scanner *sc)
{
    const unsigned char *p = sc->s + sc->pos, *end = sc->s + sc->n;
    uint64_t w;

    while (end - p >= 8 && (memcpy(&w, p, 8), !special8(w)))
        p += 8;
    while (p < end && *p >= 0x20 && *p != '"' && *p != '\\')
        p++;
    sc->pos = (size_t)(p - sc->s);
}

/* pos at the opening quote; on success pos is after the closing one. */
static bool scan_string(scanner *sc)
{
    sc->pos++;
    while (sc->pos < sc->n) {
        skip_plain(sc);
        if (sc->pos >= sc->n)
            return false;
        unsigned char c = sc->s[sc->pos++];

        if (c == '"')
            return true;
        if (c < 0x20) {
            sc->pos--;
            sc->why = "control character in a string";
            return false;
        }
        if (sc->pos >= sc->n)
            return false;
        c = sc->s[sc->pos++];
        if (c == 'u') {
            if (!scan_unicode(sc))
                return false;
        } else if (strchr("\"\\/bfnrt", c) == NULL || c == '\0') {
            sc->pos--;
            return false;
        }
    }
    return false;
}

static bool is_digit(const scanner *sc)
{
    return sc->pos < sc->n && sc->s[sc->pos] >= '0' && sc->s[sc->pos] <= '9';
}

static void skip_digits(scanner *sc)
{
    while (is_digit(sc))
        sc->pos++;
}

/* -? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)? */
static bool scan_number(scanner *sc)
{
    size_t start = sc->pos;

    if (sc->s[sc->pos] == '-')
        sc->pos++;
    if (!is_digit(sc))
        return false;
    if (sc->s[sc->pos++] != '0')
        skip_digits(sc);
    if (sc->pos < sc->n && sc->s[sc->pos] == '.') {
        sc->pos++;
        if (!is_digit(sc))
            return false;
        skip_digits(sc);
    }
    if (sc->pos < sc->n && (sc->s[sc->pos] == 'e' || sc->s[sc->pos] == 'E')) {
        sc->pos++;
        if (sc->pos < sc->n && (sc->s[sc->pos] == '+' || sc->s[sc->pos] == '-'))
            sc->pos++;
        if (!is_digit(sc))
            return false;
        skip_digits(sc);
    }
    if (sc->pos - start > KILN__JSON_NUMBER_MAX) {
        sc->pos = start;
        sc->why = "number longer than 63 characters";
        return false;
    }
    return true;
}

static bool scan_literal(scanner *sc, const char *word)
{
    size_t len = strlen(word);

    if (sc->n - sc->pos < len || memcmp(sc->s + sc->pos, word, len) != 0)
        return false;
    sc->pos += len;
    return true;
}

/* A scalar value at pos (not a container). */
static bool scan_scalar(scanner *sc)
{
    unsigned char c = sc->s[sc->pos];

    if (c == '"')
        return scan_string(sc);
    if (c == '-' || (c >= '0' && c <= '9'))
        return scan_number(sc);
    if (c == 't')
        return scan_literal(sc, "true");
    if (c == 'f')
        return scan_literal(sc, "false");
    if (c == 'n')
        return scan_literal(sc, "null");
    return false;
}

static kiln_err add_span(kiln__spans *sp, size_t off, size_t len,
                         kiln_error *err)
{
    kiln__span *v;
    size_t cap;

    if (sp->n == sp->cap) {
        cap = sp->cap == 0 ? 32 : sp->cap * 2;
        if (cap > SIZE_MAX / sizeof(*v) ||
            (v = kiln__realloc(sp->v, cap * sizeof(*v))) == NULL)
            return kiln__fail(err, KILN_ENOMEM, "scanning JSON");
        sp->v = v;
        sp->cap = cap;
    }
    sp->v[sp->n].off = off;
    sp->v[sp->n++].len = len;
    return KILN_OK;
}

void kiln__spans_free(kiln__spans *sp)
{
    if (sp == NULL)
        return;
    kiln__free(sp->v);
    memset(sp, 0, sizeof(*sp));
}

_Static_assert(KILN__JSON_MAX_DEPTH == 128, "the message below says 128");

enum state { WANT_VALUE, FIRST_IN_ARRAY, FIRST_KEY, WANT_KEY, AFTER_VALUE };

typedef struct walk {
    scanner sc;
    unsigned char kind[KILN__JSON_MAX_DEPTH]; /* '{' or '[' per level */
    size_t depth;
    size_t member_start;
    kiln__spans *members;
} walk;

/* Starts a value at pos: opens a container or scans a scalar. */
static bool start_value(walk *w, enum state *st)
{
    unsigned char c = w->sc.s[w->sc.pos];

    if (c != '{' && c != '[') {
        *st = AFTER_VALUE;
        return scan_scalar(&w->sc);
    }
    if (w->depth == KILN__JSON_MAX_DEPTH) {
        w->sc.why = "nested deeper than 128 levels";
        return false;
    }
    w->kind[w->depth++] = c;
    w->sc.pos++;
    *st = c == '{' ? FIRST_KEY : FIRST_IN_ARRAY;
    return true;
}

/* After a value: a comma, the close of the container, or the end. */
static bool after_value(walk *w, enum state *st)
{
    unsigned char c = w->sc.s[w->sc.pos], kind = w->kind[w->depth - 1];

    if (c == ',') {
        w->sc.pos++;
        *st = kind == '{' ? WANT_KEY : WANT_VALUE;
        return true;
    }
    if ((kind == '{' && c != '}') || (kind == '[' && c != ']'))
        return false;
    w->sc.pos++;
    w->depth--;
    return true;
}

/* A close bracket at pos ends the innermost container. */
static bool close_empty(walk *w, enum state *st, unsigned char c,
                        unsigned char want)
{
    if (c != want)
        return false;
    w->sc.pos++;
    w->depth--;
    *st = AFTER_VALUE;
    return true;
}

static bool scan_key(walk *w, enum state *st)
{
    if (w->sc.s[w->sc.pos] != '"' || !scan_string(&w->sc))
        return false;
    skip_ws(&w->sc);
    if (w->sc.pos >= w->sc.n || w->sc.s[w->sc.pos] != ':')
        return false;
    w->sc.pos++;
    *st = WANT_VALUE;
    return true;
}

/* One step of the scan at a non-space byte. */
static bool step(walk *w, enum state *st, kiln_err *rc, kiln_error *err)
{
    unsigned char c = w->sc.s[w->sc.pos];
    size_t before = w->depth;
    enum state was = *st;
    bool ok;

    if (was == WANT_VALUE && before == 1)
        w->member_start = w->sc.pos;
    if (was == FIRST_IN_ARRAY)
        ok = close_empty(w, st, c, ']') || start_value(w, st);
    else if (was == FIRST_KEY)
        ok = close_empty(w, st, c, '}') || scan_key(w, st);
    else if (was == WANT_KEY)
        ok = scan_key(w, st);
    else if (was == WANT_VALUE)
        ok = start_value(w, st);
    else
        ok = after_value(w, st);
    if (!ok)
        return false;
    /* A member of the top-level object is complete when a scalar ends at
     * depth 1 or its container closes back to depth 1. */
    if (w->members != NULL && *st == AFTER_VALUE && w->depth == 1 &&
        w->kind[0] == '{' &&
        ((was == WANT_VALUE && before == 1) || before == 2))
        *rc = add_span(w->members, w->member_start, w->sc.pos - w->member_start,
                       err);
    return *rc == KILN_OK;
}

static kiln_err scan_fail(const walk *w, const char *what, kiln_error *err)
{
    if (w->sc.why != NULL)
        return kiln__fail(err, KILN_ECODEC, "%s: not JSON (%s, at byte %zu)",
                          what, w->sc.why, w->sc.pos);
    return kiln__fail(err, KILN_ECODEC, "%s: not JSON (error near byte %zu)",
                      what, w->sc.pos);
}

kiln_err kiln__json_validate(const char *s, size_t n, const char *what,
                             kiln__spans *members, kiln_error *err)
{
    walk w;
    enum state st = WANT_VALUE;
    kiln_err rc = KILN_OK;

    memset(&w, 0, sizeof(w));
    w.sc.s = (const unsigned char *)s;
    w.sc.n = n;
    w.members = members;
    for (;;) {
        skip_ws(&w.sc);
        if (st == AFTER_VALUE && w.depth == 0)
            break;
        if (w.sc.pos >= n || !step(&w, &st, &rc, err)) {
            if (rc != KILN_OK)
                return rc;
            return scan_fail(&w, what, err);
        }
    }
    if (w.sc.pos != n) {
        w.sc.why = "data after the JSON value";
        return scan_fail(&w, what, err);
    }
    return KILN_OK;
}

kiln_err kiln__json_parse(const char *s, size_t n, size_t max_len,
                          const char *what, kiln__spans *members, cJSON **root,
                          kiln_error *err)
{
    size_t limit = max_len == 0 ? KILN__DEFAULT_MAX_BODY : max_len;
    size_t bad;
    kiln_err rc;
    cJSON *tree;

    *root = NULL;
    if (n > limit)
        return kiln__fail(err, KILN_ETOOBIG,
                          "%s: %zu bytes, more than the limit of %zu", what, n,
                          limit);
    if (n == 0)
        return kiln__fail(err, KILN_ECODEC, "%s: empty", what);
    if ((bad = kiln__utf8_error_at(s, n)) < n)
        return kiln__fail(err, KILN_ECODEC, "%s: invalid UTF-8 at byte %zu",
                          what, bad);
    if ((rc = kiln__json_validate(s, n, what, members, err)) != KILN_OK)
        return rc;
    /* The scan accepted the text, so cJSON can only fail for memory. */
    if ((tree = cJSON_ParseWithLength(s, n)) == NULL)
        return kiln__fail(err, KILN_ENOMEM, "%s: parsing %zu bytes", what, n);
    if ((rc = kiln__json_raw_numbers(tree, s, n, err)) != KILN_OK) {
        cJSON_Delete(tree);
        return rc;
    }
    *root = tree;
    return KILN_OK;
}
