/*
 * kiln_config_from_env: the one place in the library that reads the
 * environment. Values are parsed into a copy, the copy is validated as a
 * whole, and only a valid copy replaces the caller's config.
 */
#include "config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* getenv races with setenv in another thread; kiln.h tells callers not to
 * change the environment while this runs, which makes the call safe. */
static const char *lookup(const char *name)
{
    if (name == NULL)
        return NULL;
    return getenv(name); // NOLINT(concurrency-mt-unsafe): see above
}

/* Names derived from another name: renaming the queue or the exchange
 * renames these too, unless the user set them. */
static const struct derived_name {
    size_t field;
    size_t base;
    const char *suffix;
} derived[] = {
    {offsetof(kiln_config, dead_letter_exchange), offsetof(kiln_config, queue),
     ".dlx"},
    {offsetof(kiln_config, dead_letter_queue), offsetof(kiln_config, queue),
     ".dead"},
    {offsetof(kiln_config, delay_exchange), offsetof(kiln_config, exchange),
     ".delay"},
};

static bool terminated(const kiln_config *cfg, size_t offset)
{
    return memchr((const char *)cfg + offset, '\0', KILN_NAME_MAX) != NULL;
}

/* A derived name follows its base when its variable is not set and it
 * still holds the value derived from the old base; a name the program set
 * to something else is left alone. */
static kiln_err derive(const kiln_config *old, kiln_config *cfg,
                       const char *const *used, kiln_error *err)
{
    for (size_t k = 0; k < KILN__ARRAY_LEN(derived); k++) {
        const struct derived_name *d = &derived[k];
        size_t fi = kiln__cfg_index(d->field);
        char want[2 * KILN_NAME_MAX];
        size_t len;

        if (used[fi] != NULL || !terminated(old, d->field) ||
            !terminated(old, d->base) || !terminated(cfg, d->base))
            continue;
        (void)snprintf(want, sizeof(want), "%s%s", (const char *)old + d->base,
                       d->suffix);
        if (strcmp((const char *)old + d->field, want) != 0)
            continue;
        (void)snprintf(want, sizeof(want), "%s%s", (const char *)cfg + d->base,
                       d->suffix);
        len = strlen(want);
        if (len >= KILN_NAME_MAX)
            return kiln__cfg_bad(
                err, kiln__cfg_fields[fi].var, want,
                "derived from %s, is %zu bytes; expected at most %d (set %s)",
                kiln__cfg_name(used, kiln__cfg_index(d->base)), len,
                KILN_NAME_MAX - 1, kiln__cfg_fields[fi].var);
        memcpy((char *)cfg + d->field, want, len + 1);
    }
    return KILN_OK;
}

kiln_err kiln_config_from_env(kiln_config *cfg, kiln_error *err)
{
    const char *used[KILN__CFG_NFIELDS];
    kiln_config tmp;
    kiln_err rc;

    if (cfg == NULL)
        return kiln__fail(err, KILN_EINVAL,
                          "kiln_config_from_env: cfg is NULL");
    tmp = *cfg;
    for (size_t i = 0; i < KILN__CFG_NFIELDS; i++) {
        const kiln__cfg_field *f = &kiln__cfg_fields[i];
        const char *text;

        /* A KILN_* variable wins over paota's name, even when empty. */
        used[i] = NULL;
        if ((text = lookup(f->var)) != NULL)
            used[i] = f->var;
        else if ((text = lookup(f->alias)) != NULL)
            used[i] = f->alias;
        else
            continue;
        rc = kiln__cfg_parse(f, used[i], text, &tmp, err);
        if (rc != KILN_OK)
            return rc;
    }
    if ((rc = derive(cfg, &tmp, used, err)) != KILN_OK)
        return rc;
    if ((rc = kiln__cfg_validate(&tmp, used, err)) != KILN_OK)
        return rc;
    *cfg = tmp;
    return KILN_OK;
}
