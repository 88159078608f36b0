/*
 * Reading one variable's text into a field, and checking one field. Both
 * sides use the same string rules, so a value is accepted from the
 * environment exactly when kiln_config_validate would accept it. Numbers
 * are plain decimal: no sign, no spaces, no base prefix, no suffix.
 */
#include "config/config.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char AMQP_FORM[] =
    "amqp[s]://[user[:password]@]host[:port][/vhost]";
static const char MONGO_FORM[] =
    "mongodb://[user[:password]@]host[:port][,...][/db][?options] or "
    "mongodb+srv://host";
static const char BOOL_EXPECTED[] = "true, false, 1, 0, yes, no, on or off";

static char *field_at(kiln_config *cfg, const kiln__cfg_field *f)
{
    return (char *)cfg + f->offset;
}

static const char *cfield_at(const kiln_config *cfg, const kiln__cfg_field *f)
{
    return (const char *)cfg + f->offset;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        unsigned d = (unsigned)(*s - '0');

        if (*s < '0' || *s > '9' || v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};

    for (size_t i = 0; i < KILN__ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

static const kiln__cfg_word *word_by_name(const kiln__cfg_word *w,
                                          const char *s, bool any_case)
{
    for (; w->name != NULL; w++)
        if ((any_case ? strcasecmp(s, w->name) : strcmp(s, w->name)) == 0)
            return w;
    return NULL;
}

static const kiln__cfg_word *word_by_value(const kiln__cfg_word *w, int v)
{
    for (; w->name != NULL; w++)
        if (w->value == v)
            return w;
    return NULL;
}

static bool has_control(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* The rules for the text of a NAME, PATH or URL field; NULL when `s`
 * passes, else the reason, formatted into buf. */
static const char *string_problem(const kiln__cfg_field *f, const char *s,
                                  char *buf, size_t n)
{
    size_t len = strlen(s);
    const char *why = NULL;
    char reason[160];

    if (len > f->max) {
        (void)snprintf(buf, n, "is %zu bytes; expected at most %llu", len,
                       (unsigned long long)f->max);
        return buf;
    }
    if (f->kind == KILN__CFG_AMQP_URL)
        why = kiln__cfg_amqp_url_problem(s, reason, sizeof(reason));
    else if (f->kind == KILN__CFG_MONGO_URL)
        why = kiln__cfg_mongo_url_problem(s, reason, sizeof(reason));
    if (why != NULL) {
        (void)snprintf(buf, n, "%s; expected %s", why,
                       f->kind == KILN__CFG_AMQP_URL ? AMQP_FORM : MONGO_FORM);
        return buf;
    }
    if (len < f->min) {
        (void)snprintf(buf, n, "expected a name of %llu to %llu bytes",
                       (unsigned long long)f->min, (unsigned long long)f->max);
        return buf;
    }
    if (has_control(s))
        return "contains a control character";
    if (len > 0 && (s[0] == ' ' || s[len - 1] == ' '))
        return "has leading or trailing spaces";
    if (!kiln__utf8_valid(s, len))
        return "is not valid UTF-8";
    if ((f->flags & KILN__CFG_ENTITY) && strncmp(s, "amq.", 4) == 0)
        return "names starting with \"amq.\" are reserved by RabbitMQ";
    if ((f->flags & KILN__CFG_MONGO_DB) && strpbrk(s, "/\\. \"$") != NULL)
        return "a MongoDB database name cannot hold / \\ . \" $ or a space";
    return NULL;
}

static kiln_err number_error(const kiln__cfg_field *f, const char *var,
                             const char *text, kiln_error *err)
{
    return kiln__cfg_bad(
        err, var, text, "expected %s from %llu to %llu",
        f->kind == KILN__CFG_SIZE ? "a byte count" : "an integer",
        (unsigned long long)f->min, (unsigned long long)f->max);
}

static kiln_err parse_number(const kiln__cfg_field *f, const char *var,
                             const char *text, kiln_config *cfg,
                             kiln_error *err)
{
    uint64_t v;

    if (!parse_u64(text, &v) || v < f->min || v > f->max)
        return number_error(f, var, text, err);
    if (f->kind == KILN__CFG_SIZE) {
        size_t z = (size_t)v;
        memcpy(field_at(cfg, f), &z, sizeof(z));
    } else {
        unsigned u = (unsigned)v;
        memcpy(field_at(cfg, f), &u, sizeof(u));
    }
    return KILN_OK;
}

static kiln_err parse_word(const kiln__cfg_field *f, const char *var,
                           const char *text, kiln_config *cfg, kiln_error *err)
{
    const kiln__cfg_word *w = word_by_name(f->words, text, true);

    if (w == NULL)
        return kiln__cfg_bad(err, var, text, "expected %s", f->expected);
    /* Stored in its canonical spelling: RabbitMQ's names are lowercase. */
    if (f->kind == KILN__CFG_WORD)
        kiln__strlcpy(field_at(cfg, f), w->name, f->size);
    else
        memcpy(field_at(cfg, f), &w->value, sizeof(int));
    return KILN_OK;
}

kiln_err kiln__cfg_parse(const kiln__cfg_field *f, const char *var,
                         const char *text, kiln_config *cfg, kiln_error *err)
{
    char buf[160];
    const char *why;
    bool b;

    switch (f->kind) {
    case KILN__CFG_NAME:
    case KILN__CFG_PATH:
    case KILN__CFG_AMQP_URL:
    case KILN__CFG_MONGO_URL:
        if ((why = string_problem(f, text, buf, sizeof(buf))) != NULL)
            return kiln__cfg_bad(err, var, text, "%s", why);
        memcpy(field_at(cfg, f), text, strlen(text) + 1);
        return KILN_OK;
    case KILN__CFG_WORD:
    case KILN__CFG_ENUM:
        return parse_word(f, var, text, cfg, err);
    case KILN__CFG_BOOL:
        if (!parse_bool(text, &b))
            return kiln__cfg_bad(err, var, text, "expected %s", BOOL_EXPECTED);
        memcpy(field_at(cfg, f), &b, sizeof(b));
        return KILN_OK;
    case KILN__CFG_UINT:
    case KILN__CFG_SIZE:
        return parse_number(f, var, text, cfg, err);
    }
    return kiln__fail(err, KILN_EINVAL, "%s: unknown field kind", var);
}

static kiln_err check_string(const kiln__cfg_field *f, const char *var,
                             const kiln_config *cfg, kiln_error *err)
{
    const char *s = cfield_at(cfg, f);
    char buf[160];
    const char *why;

    if (memchr(s, '\0', f->size) == NULL)
        return kiln__fail(err, KILN_EINVAL,
                          "%s: the field has no NUL within its %zu bytes", var,
                          f->size);
    if (f->kind == KILN__CFG_WORD) {
        if (word_by_name(f->words, s, false) == NULL)
            return kiln__cfg_bad(err, var, s, "expected %s", f->expected);
        return KILN_OK;
    }
    if ((why = string_problem(f, s, buf, sizeof(buf))) != NULL)
        return kiln__cfg_bad(err, var, s, "%s", why);
    return KILN_OK;
}

kiln_err kiln__cfg_check(const kiln__cfg_field *f, const char *var,
                         const kiln_config *cfg, kiln_error *err)
{
    char text[32];
    unsigned u;
    size_t z;
    int v;

    switch (f->kind) {
    case KILN__CFG_UINT:
        memcpy(&u, cfield_at(cfg, f), sizeof(u));
        if (u < f->min || u > f->max)
            return number_error(
                f, var, kiln__cfg_text(f, cfg, text, sizeof(text)), err);
        return KILN_OK;
    case KILN__CFG_SIZE:
        memcpy(&z, cfield_at(cfg, f), sizeof(z));
        if (z < f->min || z > f->max)
            return number_error(
                f, var, kiln__cfg_text(f, cfg, text, sizeof(text)), err);
        return KILN_OK;
    case KILN__CFG_ENUM:
        memcpy(&v, cfield_at(cfg, f), sizeof(v));
        if (word_by_value(f->words, v) == NULL)
            return kiln__cfg_bad(err, var,
                                 kiln__cfg_text(f, cfg, text, sizeof(text)),
                                 "expected %s", f->expected);
        return KILN_OK;
    case KILN__CFG_BOOL:
        return KILN_OK;
    default:
        return check_string(f, var, cfg, err);
    }
}

char *kiln__cfg_text(const kiln__cfg_field *f, const kiln_config *cfg,
                     char *out, size_t n)
{
    const char *p = cfield_at(cfg, f);
    const kiln__cfg_word *w;
    unsigned u;
    size_t z;
    int v;

    switch (f->kind) {
    case KILN__CFG_UINT:
        memcpy(&u, p, sizeof(u));
        (void)snprintf(out, n, "%u", u);
        break;
    case KILN__CFG_SIZE:
        memcpy(&z, p, sizeof(z));
        (void)snprintf(out, n, "%zu", z);
        break;
    case KILN__CFG_BOOL:
        kiln__strlcpy(out, *(const bool *)(const void *)p ? "true" : "false",
                      n);
        break;
    case KILN__CFG_ENUM:
        memcpy(&v, p, sizeof(v));
        if ((w = word_by_value(f->words, v)) != NULL)
            kiln__strlcpy(out, w->name, n);
        else
            (void)snprintf(out, n, "%d", v);
        break;
    default:
        /* A bounded copy: the field may lack its NUL. */
        z = strnlen(p, f->size);
        if (z >= n)
            z = n - 1;
        memcpy(out, p, z);
        out[z] = '\0';
        break;
    }
    return out;
}
