/* The input side of the codec: a strict RFC 8259 reader. The decoder
 * reads the fields kiln models with its pieces (strings, numbers, keys)
 * and passes over everything else with kiln__rd_skip, which checks the
 * skipped value as strictly and says how large it is; kiln__json_validate
 * is the same check on a whole text.
 *
 * Go's decoder is the model: no byte up to space but the four JSON ones
 * as whitespace, no raw control bytes inside strings, no leading zeros
 * ("01"), no "1." or "-.5", nothing after the value. (cJSON, which builds
 * the trees of values kept verbatim, accepts all of these, so it never
 * reads the text itself.) */
#include "task/codec.h"

#include <string.h>

/* Task bodies are nearly all ASCII, so eight bytes are checked at once
 * (no high bit set) before the byte-wise path; memcpy keeps the load
 * legal at any alignment. */
#define HIGH_BITS 0x8080808080808080ULL

size_t kiln__utf8_error_at(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, len;

    while (i < n) {
        uint64_t w[4];
        if (n - i >= 32 && (memcpy(w, p + i, 32),
                            ((w[0] | w[1] | w[2] | w[3]) & HIGH_BITS) == 0)) {
            i += 32;
            continue;
        }
        if (n - i >= 8 && (memcpy(w, p + i, 8), (w[0] & HIGH_BITS) == 0)) {
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
static long hex4(kiln__reader *sc)
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
static bool scan_unicode(kiln__reader *sc)
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

/* The high bit of each byte of w that is special. Each test can also flag
 * a byte above a special one (a borrow), never one below, so the lowest
 * bit set is exactly the first special byte. */
static uint64_t special8(uint64_t w)
{
    return ((w - 0x20 * ONES) & ~w & HIGH_BITS) | HAS_ZERO(w ^ ('"' * ONES)) |
           HAS_ZERO(w ^ ('\\' * ONES));
}

/* Moves pos over the plain bytes of a string (neither a quote, a
 * backslash nor a control byte), eight at a time where it can: the bulk of
 * every body. On a little-endian machine the word that holds the end
 * also says where it is. */
static void skip_plain(kiln__reader *sc)
{
    const unsigned char *p = sc->s + sc->pos, *end = sc->s + sc->n;
    uint64_t w, m;

    while (end - p >= 8) {
        memcpy(&w, p, 8);
        if ((m = special8(w)) != 0) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            sc->pos = (size_t)(p - sc->s) + (size_t)(__builtin_ctzll(m) >> 3);
            return;
#else
            break;
#endif
        }
        p += 8;
    }
    while (p < end && *p >= 0x20 && *p != '"' && *p != '\\')
        p++;
    sc->pos = (size_t)(p - sc->s);
}

static bool simple_escape(unsigned char c)
{
    switch (c) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        return true;
    default:
        return false;
    }
}

/* pos at the opening quote; on success pos is after the closing one. */
static bool scan_string(kiln__reader *sc, bool *escaped)
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
        *escaped = true;
        c = sc->s[sc->pos++];
        if (c == 'u') {
            if (!scan_unicode(sc))
                return false;
        } else if (!simple_escape(c)) {
            sc->pos--;
            return false;
        }
    }
    return false;
}

bool kiln__rd_string(kiln__reader *r, size_t *len, bool *escaped)
{
    size_t start = r->pos;

    *escaped = false;
    if (r->pos >= r->n || r->s[r->pos] != '"' || !scan_string(r, escaped))
        return false;
    *len = r->pos - start - 2;
    return true;
}

static bool is_digit(const kiln__reader *sc)
{
    return sc->pos < sc->n && sc->s[sc->pos] >= '0' && sc->s[sc->pos] <= '9';
}

static void skip_digits(kiln__reader *sc)
{
    while (is_digit(sc))
        sc->pos++;
}

/* -? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)? */
static bool scan_number(kiln__reader *sc)
{
    size_t start = sc->pos;

    if (sc->pos < sc->n && sc->s[sc->pos] == '-')
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

bool kiln__rd_number(kiln__reader *r)
{
    return scan_number(r);
}

static bool scan_literal(kiln__reader *sc, const char *word)
{
    size_t len = strlen(word);

    if (sc->n - sc->pos < len || memcmp(sc->s + sc->pos, word, len) != 0)
        return false;
    sc->pos += len;
    return true;
}

bool kiln__rd_literal(kiln__reader *r, const char *word)
{
    return scan_literal(r, word);
}

const char *kiln__json_kind_at(unsigned char c)
{
    switch (c) {
    case '{':
        return "object";
    case '[':
        return "array";
    case '"':
        return "string";
    case 't':
    case 'f':
        return "bool";
    case 'n':
        return "null";
    default:
        return "number";
    }
}

/* A scalar value at pos (not a container), other than a string. */
static bool scan_scalar(kiln__reader *sc)
{
    unsigned char c = sc->s[sc->pos];

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

_Static_assert(KILN__JSON_MAX_DEPTH == 128, "the message below says 128");

enum state { WANT_VALUE, FIRST_IN_ARRAY, FIRST_KEY, WANT_KEY, AFTER_VALUE };

typedef struct walk {
    kiln__reader *sc;
    unsigned char kind[KILN__JSON_MAX_DEPTH]; /* '{' or '[' per level */
    size_t depth;                             /* levels open, outer ones too */
    size_t base;                              /* depth of the value walked */
    kiln__extent *x;
} walk;

/* Starts a value at pos: opens a container or scans a scalar, counting it
 * (and, directly inside the walked value, as one of its elements). */
static bool start_value(walk *w, enum state *st)
{
    kiln__reader *sc = w->sc;
    unsigned char c = sc->s[sc->pos];
    bool top = w->depth == w->base + 1, esc = false;
    size_t at = sc->pos;

    w->x->values++;
    w->x->elems += top;
    if (c == '"') {
        *st = AFTER_VALUE;
        if (!scan_string(sc, &esc))
            return false;
        if (top)
            w->x->text += sc->pos - at - 2;
        w->x->esc |= esc;
        return true;
    }
    if (c != '{' && c != '[') {
        *st = AFTER_VALUE;
        return scan_scalar(sc);
    }
    if (w->depth == KILN__JSON_MAX_DEPTH) {
        sc->why = "nested deeper than 128 levels";
        return false;
    }
    w->kind[w->depth++] = c;
    sc->pos++;
    *st = c == '{' ? FIRST_KEY : FIRST_IN_ARRAY;
    return true;
}

/* After a value: a comma or the close of the container. */
static bool after_value(walk *w, enum state *st)
{
    unsigned char c = w->sc->s[w->sc->pos], kind = w->kind[w->depth - 1];

    if (c == ',') {
        w->sc->pos++;
        *st = kind == '{' ? WANT_KEY : WANT_VALUE;
        return true;
    }
    if ((kind == '{' && c != '}') || (kind == '[' && c != ']'))
        return false;
    w->sc->pos++;
    w->depth--;
    return true;
}

/* A close bracket at pos ends the innermost container. */
static bool close_empty(walk *w, enum state *st, unsigned char c,
                        unsigned char want)
{
    if (c != want)
        return false;
    w->sc->pos++;
    w->depth--;
    *st = AFTER_VALUE;
    return true;
}

static bool scan_key(walk *w, enum state *st)
{
    kiln__reader *sc = w->sc;
    bool esc = false;

    if (sc->s[sc->pos] != '"' || !scan_string(sc, &esc))
        return false;
    kiln__rd_ws(sc);
    if (sc->pos >= sc->n || sc->s[sc->pos] != ':')
        return false;
    sc->pos++;
    *st = WANT_VALUE;
    return true;
}

/* One step of the walk at a non-space byte. */
static bool step(walk *w, enum state *st)
{
    unsigned char c = w->sc->s[w->sc->pos];

    switch (*st) {
    case FIRST_IN_ARRAY:
        return close_empty(w, st, c, ']') || start_value(w, st);
    case FIRST_KEY:
        return close_empty(w, st, c, '}') || scan_key(w, st);
    case WANT_KEY:
        return scan_key(w, st);
    case WANT_VALUE:
        return start_value(w, st);
    default:
        return after_value(w, st);
    }
}

bool kiln__rd_skip(kiln__reader *r, size_t depth, kiln__extent *x)
{
    walk w;
    enum state st = WANT_VALUE;
    kiln__extent ignored = {0};

    w.sc = r;
    w.depth = w.base = depth;
    w.x = x != NULL ? x : &ignored;
    memset(w.x, 0, sizeof(*w.x));
    kiln__rd_ws(r);
    w.x->off = r->pos;
    if (depth > KILN__JSON_MAX_DEPTH)
        return false;
    for (;;) {
        if (r->pos >= r->n || !step(&w, &st))
            return false;
        if (st == AFTER_VALUE && w.depth == depth)
            break;
        kiln__rd_ws(r);
    }
    w.x->len = r->pos - w.x->off;
    return true;
}

kiln_err kiln__rd_fail(const kiln__reader *r, const char *what, kiln_error *err)
{
    if (r->why != NULL)
        return kiln__fail(err, KILN_ECODEC, "%s: not JSON (%s, at byte %zu)",
                          what, r->why, r->pos);
    return kiln__fail(err, KILN_ECODEC, "%s: not JSON (error near byte %zu)",
                      what, r->pos);
}

kiln_err kiln__json_validate(const char *s, size_t n, const char *what,
                             kiln_error *err)
{
    kiln__reader r = {(const unsigned char *)s, n, 0, NULL};

    if (!kiln__rd_skip(&r, 0, NULL))
        return kiln__rd_fail(&r, what, err);
    kiln__rd_ws(&r);
    if (r.pos != n) {
        r.why = "data after the JSON value";
        return kiln__rd_fail(&r, what, err);
    }
    return KILN_OK;
}
