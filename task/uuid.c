/* Task ids as machinery makes them: "task_" and an RFC 4122 version-4
 * UUID in lowercase hex with dashes, e.g.
 * "task_3b241101-e2bb-4255-8caf-4136c566a962". */
#include "task/task.h"

#include <string.h>

#define PREFIX     "task_"
#define PREFIX_LEN (sizeof(PREFIX) - 1)
#define TEXT_LEN   (PREFIX_LEN + 36) /* without the NUL */

_Static_assert(KILN_UUID_LEN >= TEXT_LEN + 1, "KILN_UUID_LEN holds a task id");

kiln_err kiln_uuid_new(char *out, size_t n, kiln_error *err)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    char *p;
    kiln_err rc;

    if (out == NULL || n < TEXT_LEN + 1)
        return kiln__fail(err, KILN_EINVAL,
                          "UUID buffer of %zu bytes, %zu "
                          "needed",
                          out == NULL ? 0 : n, (size_t)TEXT_LEN + 1);
    if ((rc = kiln__random(b, sizeof(b), err)) != KILN_OK)
        return rc;
    /* RFC 4122, section 4.4: version 4 in the top nibble of byte 6, the
     * variant bits 10 in the top of byte 8. */
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    memcpy(out, PREFIX, PREFIX_LEN);
    p = out + PREFIX_LEN;
    for (size_t i = 0; i < sizeof(b); i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 0x0f];
    }
    *p = '\0';
    return KILN_OK;
}
