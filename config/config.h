/*
 * Internal side of the configuration module: one table describes every
 * field of kiln_config (its variable, its paota alias, its kind and its
 * accepted range), so reading the environment and validating a struct built
 * by hand run the same checks and name the same variables. Never installed.
 */
#ifndef KILN_CONFIG_H
#define KILN_CONFIG_H

#include "core/core.h"

#include <stddef.h>
#include <stdint.h>

/* The number of fields in kiln_config, and so of rows in the table. */
#define KILN__CFG_NFIELDS 43

typedef enum kiln__cfg_kind {
    KILN__CFG_NAME,      /* AMQP or MongoDB name: min..max bytes of UTF-8 */
    KILN__CFG_PATH,      /* file path; may be empty */
    KILN__CFG_AMQP_URL,  /* amqp:// or amqps:// */
    KILN__CFG_MONGO_URL, /* mongodb:// or mongodb+srv:// */
    KILN__CFG_WORD,      /* char array holding one of `words` (lowercase) */
    KILN__CFG_UINT,      /* unsigned in min..max */
    KILN__CFG_SIZE,      /* size_t in min..max */
    KILN__CFG_BOOL,      /* bool */
    KILN__CFG_ENUM       /* a C enum; `words` maps names to values */
} kiln__cfg_kind;

/* Flags for KILN__CFG_NAME fields. */
#define KILN__CFG_ENTITY   1u /* exchange or queue: "amq." is reserved */
#define KILN__CFG_MONGO_DB 2u /* MongoDB database name rules */

/* One accepted spelling of an enum value. Tables end with a NULL name; the
 * first spelling of each value is the canonical one. */
typedef struct kiln__cfg_word {
    const char *name;
    int value;
} kiln__cfg_word;

typedef struct kiln__cfg_field {
    const char *var;   /* "KILN_PREFETCH" */
    const char *alias; /* paota's name, or NULL */
    kiln__cfg_kind kind;
    unsigned flags;              /* KILN__CFG_ENTITY, KILN__CFG_MONGO_DB */
    size_t offset;               /* offsetof(kiln_config, field) */
    size_t size;                 /* sizeof the field */
    uint64_t min, max;           /* numbers: the range; names: byte counts */
    const kiln__cfg_word *words; /* KILN__CFG_WORD and KILN__CFG_ENUM */
    const char *expected;        /* e.g. "classic or quorum" */
} kiln__cfg_field;

/* Declared without a size so that config.c's definition takes its size from
 * its rows, which a static assertion then compares with KILN__CFG_NFIELDS. */
extern const kiln__cfg_field kiln__cfg_fields[];

/* kiln__cfg_index returns the row of the field at `offset`. */
size_t kiln__cfg_index(size_t offset);

/* kiln__cfg_name is the variable to name in a message about row `i`: the
 * one the value was read from when `used` (may be NULL) says so, else the
 * KILN_* name. */
const char *kiln__cfg_name(const char *const *used, size_t i);

/* kiln__cfg_parse reads `text`, the value of the variable `var`, into the
 * field `f` of `cfg`. On a bad value it returns KILN_EINVAL with a message
 * naming `var`, and the field is unchanged. */
kiln_err kiln__cfg_parse(const kiln__cfg_field *f, const char *var,
                         const char *text, kiln_config *cfg, kiln_error *err);

/* kiln__cfg_check validates the field `f` of `cfg` alone. */
kiln_err kiln__cfg_check(const kiln__cfg_field *f, const char *var,
                         const kiln_config *cfg, kiln_error *err);

/* kiln__cfg_validate runs every field check, then the checks between
 * fields; `used` as for kiln__cfg_name. */
kiln_err kiln__cfg_validate(const kiln_config *cfg, const char *const *used,
                            kiln_error *err);

/* kiln__cfg_bad fills `err` with KILN_EINVAL and the message
 * `VAR="value": reason`, where the value is shown with any URL password
 * masked, control characters escaped and its length capped. */
kiln_err kiln__cfg_bad(kiln_error *err, const char *var, const char *value,
                       const char *fmt, ...) KILN_PRINTF(4, 5);

/* kiln__cfg_show writes `value` as kiln__cfg_bad shows it into out[n]. */
char *kiln__cfg_show(const char *value, char *out, size_t n);

/* kiln__cfg_text writes the field's current value as text into out[n]
 * (numbers in decimal, enums by their canonical name). */
char *kiln__cfg_text(const kiln__cfg_field *f, const kiln_config *cfg,
                     char *out, size_t n);

/* URL checks: NULL when usable, else why not (static text, or formatted
 * into buf[n]). */
const char *kiln__cfg_amqp_url_problem(const char *url, char *buf, size_t n);
const char *kiln__cfg_mongo_url_problem(const char *url, char *buf, size_t n);

#endif /* KILN_CONFIG_H */
