/* Loading the MongoDB store object (see store/plugin.h). Once loaded it
 * stays for the life of the process: libmongoc keeps threads and global
 * state that dlclose would pull from under them. */
#define _GNU_SOURCE /* dladdr */
#include "store/plugin.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef KILN__LIBDIR
#define KILN__LIBDIR "/usr/local/lib"
#endif

/* Guards the two below. Held across dlopen, which is slow only once. */
static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static const kiln__store_plugin *loaded;
static kiln__store_host host;

/* Opens `path` and asks its entry point for the store. NULL with `why`
 * filled (dlerror's text or the object's refusal) when it cannot. */
static const kiln__store_plugin *try_open(const char *path, char *why, size_t n)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    kiln__store_plugin_entry entry;
    const kiln__store_plugin *pl;
    const char *e;
    kiln_error err = {.code = KILN_OK};

    if (h == NULL) {
        /* Per thread in glibc and musl, and loading holds load_mu. */
        e = dlerror(); // NOLINT(concurrency-mt-unsafe)
        (void)snprintf(why, n, "%s", e != NULL ? e : path);
        return NULL;
    }
    /* ISO C has no function pointer from void *; POSIX guarantees it. */
    *(void **)&entry = dlsym(h, KILN__MONGO_PLUGIN_ENTRY);
    if (entry == NULL) {
        (void)snprintf(why, n, "%s: no %s: not a kiln store object", path,
                       KILN__MONGO_PLUGIN_ENTRY);
        (void)dlclose(h);
        return NULL;
    }
    if ((pl = entry(&host, &err)) == NULL ||
        pl->abi != KILN__STORE_PLUGIN_ABI || pl->store_new == NULL) {
        (void)snprintf(why, n, "%.80s: %.110s", path,
                       pl == NULL ? err.message : "another kiln's store");
        /* Left open: the object ran code and may hold state. */
        return NULL;
    }
    return pl;
}

/* The directory libkiln.so was loaded from, with a trailing '/', or ""
 * when this code is linked into the program (libkiln.a): the store object
 * is not looked for beside an executable. */
static void own_dir(char *out, size_t n)
{
    Dl_info info;
    const char *slash;

    out[0] = '\0';
    if (dladdr(&load_mu, &info) == 0 || info.dli_fname == NULL ||
        (slash = strrchr(info.dli_fname, '/')) == NULL ||
        strncmp(slash + 1, "libkiln.so", 10) != 0 ||
        (size_t)(slash - info.dli_fname) + 2 > n)
        return;
    memcpy(out, info.dli_fname, (size_t)(slash - info.dli_fname) + 1);
    out[slash - info.dli_fname + 1] = '\0';
}

/* Tries `path` when such a file exists: *done is then set, and the result
 * is final even on failure (the loader too stops at the first file it
 * finds, and an object that is there but will not load, say for want of
 * libmongoc, is the error to report). */
static const kiln__store_plugin *try_file(const char *path, char *why, size_t n,
                                          bool *done)
{
    if (*done || access(path, F_OK) != 0)
        return NULL;
    *done = true;
    return try_open(path, why, n);
}

/* The program's own library search path (its RUNPATH or RPATH,
 * LD_LIBRARY_PATH, the default directories), asked of the dynamic loader
 * for the main program: dlopen of a bare name would use the caller's,
 * which a sanitizer's interposed dlopen changes. */
static const kiln__store_plugin *try_program_path(char *why, size_t n,
                                                  bool *done)
{
    void *self = dlopen(NULL, RTLD_LAZY);
    const kiln__store_plugin *pl = NULL;
    char path[KILN_PATH_MAX + 32];
    Dl_serinfo size;
    Dl_serinfo *si = NULL;

    if (self == NULL || dlinfo(self, RTLD_DI_SERINFOSIZE, &size) != 0 ||
        (si = kiln__malloc(size.dls_size)) == NULL)
        goto out;
    *si = size;
    if (dlinfo(self, RTLD_DI_SERINFOSIZE, si) != 0 ||
        dlinfo(self, RTLD_DI_SERINFO, si) != 0)
        goto out;
    for (unsigned i = 0; i < si->dls_cnt && !*done; i++) {
        (void)snprintf(path, sizeof(path), "%s/%s", si->dls_serpath[i].dls_name,
                       KILN__MONGO_PLUGIN_FILE);
        pl = try_file(path, why, n, done);
    }
out:
    kiln__free(si);
    if (self != NULL)
        (void)dlclose(self);
    return pl;
}

/* Tries each place in store/plugin.h's order; `why` says why the object
 * could not be loaded (dlerror's text names the path). */
static const kiln__store_plugin *search(const kiln_config *cfg, char *why,
                                        size_t n)
{
    const kiln__store_plugin *pl;
    char dir[KILN_PATH_MAX], path[KILN_PATH_MAX + 32];
    bool done = false;

    if (cfg->store_plugin[0] != '\0')
        return try_open(cfg->store_plugin, why, n);
    own_dir(dir, sizeof(dir));
    if (dir[0] != '\0') {
        (void)snprintf(path, sizeof(path), "%s%s", dir,
                       KILN__MONGO_PLUGIN_FILE);
        if ((pl = try_file(path, why, n, &done)) != NULL || done)
            return pl;
    }
    if ((pl = try_program_path(why, n, &done)) != NULL || done)
        return pl;
    (void)snprintf(path, sizeof(path), "%s/%s", KILN__LIBDIR,
                   KILN__MONGO_PLUGIN_FILE);
    if ((pl = try_file(path, why, n, &done)) != NULL || done)
        return pl;
    /* Last, the ld.so cache; its error says the file is nowhere. */
    return try_open(KILN__MONGO_PLUGIN_FILE, why, n);
}

static const kiln__store_plugin *load(const kiln_config *cfg, kiln_error *err)
{
    const kiln__store_plugin *pl;
    char why[200];

    (void)pthread_mutex_lock(&load_mu);
    if ((pl = loaded) == NULL) {
        host = (kiln__store_host){
            .abi = KILN__STORE_PLUGIN_ABI,
            .version = kiln_version_string(),
            KILN__STORE_HOST_SIZES,
            .malloc = kiln__malloc,
            .calloc = kiln__calloc,
            .realloc = kiln__realloc,
            .free = kiln__free,
            .log_enabled = kiln__log_enabled,
            .vlog_task = kiln__vlog_task,
        };
        if ((pl = search(cfg, why, sizeof(why))) != NULL) {
            loaded = pl;
            kiln__log(KILN_LOG_DEBUG, "store", "loaded the MongoDB store");
        }
    }
    (void)pthread_mutex_unlock(&load_mu);
    if (pl == NULL && cfg->store_plugin[0] != '\0')
        kiln__fail(err, KILN_ESTORE,
                   "KILN_STORE=mongodb: cannot load the store object "
                   "KILN_STORE_PLUGIN names: %s",
                   why);
    else if (pl == NULL)
        kiln__fail(err, KILN_ESTORE,
                   "KILN_STORE=mongodb: cannot load " KILN__MONGO_PLUGIN_FILE
                   " (KILN_STORE_PLUGIN sets its path): %s",
                   why);
    return pl;
}

kiln__store *kiln__store_open(const kiln_config *cfg, kiln_error *err)
{
    const kiln__store_plugin *pl;

    if (cfg == NULL || cfg->store != KILN_STORE_MONGODB) {
        kiln__fail(err, KILN_EINVAL, "store: KILN_STORE is not mongodb");
        return NULL;
    }
    if ((pl = load(cfg, err)) == NULL)
        return NULL;
    return pl->store_new(cfg, err);
}
