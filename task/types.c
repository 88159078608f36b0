/* The 29 argument types and their Go names, as machinery writes them in
 * an argument's "Type" field. */
#include "task/task.h"

#include <string.h>

/* Indexed by kiln_type. Scalars come first, then the slice of each scalar
 * in the same order, then "[]byte". */
static const char *const type_names[] = {
    "bool",     "int",       "int8",      "int16",    "int32",    "int64",
    "uint",     "uint8",     "uint16",    "uint32",   "uint64",   "float32",
    "float64",  "string",    "[]bool",    "[]int",    "[]int8",   "[]int16",
    "[]int32",  "[]int64",   "[]uint",    "[]uint8",  "[]uint16", "[]uint32",
    "[]uint64", "[]float32", "[]float64", "[]string", "[]byte",
};

_Static_assert(KILN__ARRAY_LEN(type_names) == (size_t)KILN_TYPE_LAST + 1,
               "one name per kiln_type");

const char *kiln_type_name(kiln_type t)
{
    if ((unsigned)t > (unsigned)KILN_TYPE_LAST)
        return NULL;
    return type_names[t];
}

/* The decoder calls this once per argument, so it only compares against
 * the half of the table that can match: slice names start with "[]". */
kiln_err kiln_type_from_name(const char *name, kiln_type *out)
{
    size_t first = 0, last = KILN_TYPE_STRING;

    if (name == NULL || out == NULL)
        return KILN_ETYPE;
    if (name[0] == '[') {
        first = KILN_TYPE_BOOL_SLICE;
        last = KILN_TYPE_LAST;
    }
    for (size_t i = first; i <= last; i++) {
        if (strcmp(name, type_names[i]) == 0) {
            *out = (kiln_type)i;
            return KILN_OK;
        }
    }
    return KILN_ETYPE;
}
