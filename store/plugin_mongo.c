/* The entry point of libkiln-mongo.so (see store/plugin.h), and the
 * allocator and logger calls of the store's code, lent by the host so
 * that the object shares libkiln's allocation hooks and the application's
 * log sink and level. Built into the object only, never into libkiln. */
#include "store/mongo.h"
#include "store/plugin.h"

#include <string.h>

/* Set once by the entry point, before any store exists; read-only after. */
static const kiln__store_host *host;

void *kiln__malloc(size_t n)
{
    return host->malloc(n);
}

void *kiln__calloc(size_t count, size_t size)
{
    return host->calloc(count, size);
}

void *kiln__realloc(void *p, size_t n)
{
    return host->realloc(p, n);
}

void kiln__free(void *p)
{
    host->free(p);
}

char *kiln__strndup(const char *s, size_t n)
{
    char *d;

    if (s == NULL || n == SIZE_MAX || (d = kiln__malloc(n + 1)) == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *kiln__strdup(const char *s)
{
    return s == NULL ? NULL : kiln__strndup(s, strlen(s));
}

bool kiln__log_enabled(kiln_log_level level)
{
    return host->log_enabled(level);
}

void kiln__vlog_task(kiln_log_level level, const char *module, const char *uuid,
                     const char *name, const char *fmt, va_list ap)
{
    host->vlog_task(level, module, uuid, name, fmt, ap);
}

void kiln__log_task(kiln_log_level level, const char *module, const char *uuid,
                    const char *name, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    host->vlog_task(level, module, uuid, name, fmt, ap);
    va_end(ap);
}

void kiln__log(kiln_log_level level, const char *module, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    host->vlog_task(level, module, NULL, NULL, fmt, ap);
    va_end(ap);
}

static const kiln__store_plugin plugin = {
    .abi = KILN__STORE_PLUGIN_ABI,
    .store_new = kiln__mongo_store_new,
};

const kiln__store_plugin *kiln_store_plugin_mongodb(const kiln__store_host *h,
                                                    kiln_error *err)
{
    static const kiln__store_host mine = {KILN__STORE_HOST_SIZES};

    if (h == NULL || h->abi != KILN__STORE_PLUGIN_ABI || h->version == NULL ||
        strcmp(h->version, kiln_version_string()) != 0 ||
        h->config_size != mine.config_size || h->ops_size != mine.ops_size ||
        h->record_size != mine.record_size ||
        h->update_size != mine.update_size) {
        kiln__fail(err, KILN_ESTORE,
                   "built for another libkiln (kiln %s, ABI %d; this is "
                   "%.20s): install both from one build",
                   kiln_version_string(), KILN__STORE_PLUGIN_ABI,
                   h != NULL && h->version != NULL ? h->version : "?");
        return NULL;
    }
    host = h;
    return &plugin;
}
