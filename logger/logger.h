/*
 * Internal logging calls. The public side (sink, level, format) is in
 * include/kiln.h. Never installed.
 */
#ifndef KILN_LOGGER_H
#define KILN_LOGGER_H

#include "core/core.h"

#include <stdarg.h>

/* kiln__log_enabled is true when `level` would be written. Cheap (one
 * relaxed atomic load): call sites on hot paths check it before building
 * arguments. */
bool kiln__log_enabled(kiln_log_level level);

/* kiln__log writes one line from `module` ("broker", "pool", ...). Formats
 * nothing when the level is not active. `kv` style extras go at the end of
 * the message as key=value pairs. */
void kiln__log(kiln_log_level level, const char *module, const char *fmt, ...)
    KILN_PRINTF(3, 4);

/* kiln__log_task is kiln__log for a line about one task: the task's UUID
 * and name (either may be NULL when unknown) become fields of the line
 * (`task_id=... task=...` in text, "task_id"/"task" keys in JSON). */
void kiln__log_task(kiln_log_level level, const char *module, const char *uuid,
                    const char *name, const char *fmt, ...) KILN_PRINTF(5, 6);
void kiln__vlog_task(kiln_log_level level, const char *module, const char *uuid,
                     const char *name, const char *fmt, va_list ap)
    KILN_PRINTF(5, 0);

#endif /* KILN_LOGGER_H */
