/* A user program built against the installed library with pkg-config that
 * makes a MongoDB store: libkiln must find libkiln-mongo.so where `make
 * install` put it, whether the program links libkiln.so or libkiln.a. No
 * server is needed (a store contacts it on first use). Exits 0 when the
 * store was made. */
#include <kiln.h>
#include <kiln/store_mongo.h>

#include <stdio.h>

int main(void)
{
    kiln_config cfg;
    kiln_error err;
    kiln_store *st;

    kiln_config_init(&cfg);
    cfg.store = KILN_STORE_MONGODB;
    if ((st = kiln_store_new(&cfg, &err)) == NULL) {
        fprintf(stderr, "store_app: %s: %s\n", kiln_strerror(err.code),
                err.message);
        return 1;
    }
    kiln_store_free(st);
    printf("store_app: the MongoDB store object loaded\n");
    return 0;
}
