/*
 * The MongoDB store as a loadable object. libkiln does not link libmongoc:
 * the store (store/mongo.c, mongo_doc.c, mongo_values.c, mongo_write.c)
 * is built into its own shared object, libkiln-mongo.so.MAJOR, which
 * libkiln opens with dlopen the first time a store is asked for
 * (kiln_pool_new with KILN_STORE=mongodb, kiln_store_new). A worker with
 * the store off therefore never maps libmongoc, libbson, or what they
 * pull in (OpenSSL's libcrypto, ICU, SASL, zstd, snappy).
 *
 * The object shares no symbols with libkiln: libkiln exports only its
 * public API, and a program linked with libkiln.a exports nothing. So
 * the object carries its own copies of the pure helpers it uses (error
 * filling, strings, values), and what holds process state (the
 * allocator, with its test hooks, and the logger, with the application's
 * sink and level) it reaches through the host table libkiln hands to its
 * entry point. Never installed.
 */
#ifndef KILN_STORE_PLUGIN_H
#define KILN_STORE_PLUGIN_H

#include "logger/logger.h"
#include "store/store.h"

#include <stdarg.h>

/* Raised whenever this header's tables or any struct the store shares
 * with libkiln (kiln_config, kiln__store_ops, kiln__values, ...) change
 * incompatibly; the object refuses a host of another version. */
#define KILN__STORE_PLUGIN_ABI 2

/* The object's file name; the major version is the SONAME's. */
#define KILN__MONGO_PLUGIN_FILE "libkiln-mongo.so.0"

/* The one symbol the object exports: its entry point. */
#define KILN__MONGO_PLUGIN_ENTRY "kiln_store_plugin_mongodb"

/* What libkiln lends the object: the functions that hold process state.
 * Filled by libkiln, read-only afterwards; valid for the process's life. */
typedef struct kiln__store_host {
    unsigned abi;        /* KILN__STORE_PLUGIN_ABI */
    const char *version; /* the host's kiln_version_string() */
    /* sizeof of what both sides share, as the host was built: a
     * cheap guard against an object left from another build. */
    size_t config_size, ops_size, record_size, update_size;
    void *(*malloc)(size_t n);
    void *(*calloc)(size_t count, size_t size);
    void *(*realloc)(void *p, size_t n);
    void (*free)(void *p);
    bool (*log_enabled)(kiln_log_level level);
    void (*vlog_task)(kiln_log_level level, const char *module,
                      const char *uuid, const char *name, const char *fmt,
                      va_list ap);
} kiln__store_host;

#define KILN__STORE_HOST_SIZES                                               \
    .config_size = sizeof(kiln_config), .ops_size = sizeof(kiln__store_ops), \
    .record_size = sizeof(kiln__task_record),                                \
    .update_size = sizeof(kiln__state_update)

/* What the object gives back. Static; valid while it stays loaded (it is
 * never unloaded). */
typedef struct kiln__store_plugin {
    unsigned abi; /* KILN__STORE_PLUGIN_ABI */
    /* kiln__mongo_store_new of store/mongo.h. */
    kiln__store *(*store_new)(const kiln_config *cfg, kiln_error *err);
} kiln__store_plugin;

/* The entry point's type. Returns NULL, with the reason in `err`, for a
 * host of another ABI or version. Called once per process, under
 * libkiln's lock. */
typedef const kiln__store_plugin *(*kiln__store_plugin_entry)(
    const kiln__store_host *host, kiln_error *err);

/* The entry point libkiln-mongo.so exports (store/plugin_mongo.c). Its
 * only caller is kiln__store_open, through dlsym. */
KILN_API const kiln__store_plugin *
kiln_store_plugin_mongodb(const kiln__store_host *host, kiln_error *err);

/* kiln__store_open makes the store cfg->store names (KILN_STORE_MONGODB):
 * it loads libkiln-mongo.so once per process and calls its constructor.
 * Where it looks: cfg->store_plugin when set (a path, or a bare name for
 * the loader to find; KILN_STORE_PLUGIN), and nowhere else; otherwise
 * KILN__MONGO_PLUGIN_FILE in the directory libkiln.so was loaded from,
 * then in the program's library search path (its RUNPATH,
 * LD_LIBRARY_PATH, the default directories), then in the LIBDIR the
 * library was built for, then through the ld.so cache. The first file
 * found is the one loaded, or the one whose error is reported.
 * Returns: caller owns; free with kiln__store_destroy. NULL with `err`:
 * KILN_ESTORE when the object cannot be loaded or is of another version
 * (the message names KILN_STORE, the paths tried and dlerror's text),
 * otherwise as kiln__mongo_store_new. Never exits or aborts.
 * Thread-safety: any thread; loading is serialised. */
kiln__store *kiln__store_open(const kiln_config *cfg, kiln_error *err);

#endif /* KILN_STORE_PLUGIN_H */
