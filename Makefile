# kiln: build, test, install.
#
#   make                 libkiln.a, libkiln.so and the examples (build/plain)
#   make test            install missing packages, then every test: unit tests
#                        under ASan+UBSan, under TSan and under valgrind,
#                        the integration tests (the pool's also under TSan),
#                        the symbol check, the install check, the
#                        documentation's C snippets, the examples' command
#                        lines and a bounded fuzz run
#   make install PREFIX=/usr/local
#   make check           unit tests of one variant (VARIANT=plain|asan|tsan)
#   make check-interop   kiln beside machinery and paota (Go, from the module
#                        proxy) on a private RabbitMQ and FerretDB
#   make test-long       the long ETA runs (about 9 minutes): 5,000 delayed
#                        tasks and a broker restart, quorum and classic
#                        delay levels; figures in
#                        build/test-long.txt
#   make fuzz FUZZ_SECONDS=60
#   make tidy | cppcheck | format | format-check
#
# Sources are found by wildcard: a new .c file in a module folder joins the
# library, a new test/test_*.c becomes a test binary.

VERSION_MAJOR := 0
VERSION       := 0.1.0
PREFIX        ?= /usr/local
LIBDIR        ?= $(PREFIX)/lib
INCLUDEDIR    ?= $(PREFIX)/include

VARIANT ?= plain
BUILD   := build/$(VARIANT)

CC      ?= cc
CSTD    := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
WARN    := -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes \
           -Wmissing-prototypes -Wwrite-strings -Wformat=2 -Wconversion \
           -Werror
# libkiln links only cJSON and rabbitmq-c; libmongoc is linked by the
# MongoDB store's own object, libkiln-mongo.so, which libkiln loads when a
# store is asked for (store/plugin.h), so a worker without a store never
# maps it.
DEPS_PC := libcjson librabbitmq
MONGO_PC := libmongoc-1.0
PC_CFLAGS := $(shell pkg-config --cflags $(DEPS_PC) $(MONGO_PC) 2>/dev/null)
PC_LIBS   := $(shell pkg-config --libs $(DEPS_PC) 2>/dev/null)
MONGO_LIBS := $(shell pkg-config --libs $(MONGO_PC) 2>/dev/null)
# No -lm: the one libm function kiln calls, frexp, is in glibc's libc as
# well (and musl has no separate libm), and a libm it does not need costs
# a worker about 300 kB of resident memory. Tests link it for themselves.
LIBS    := $(PC_LIBS) -pthread

OPT     := -O2 -g
SANFLAGS :=
ifeq ($(VARIANT),asan)
OPT      := -O1 -g
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=all
endif
# ThreadSanitizer is its own build, never combined with ASan.
ifeq ($(VARIANT),tsan)
OPT      := -O1 -g
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
endif

ALL_CFLAGS := $(CSTD) $(OPT) $(WARN) $(SANFLAGS) -fvisibility=hidden \
              -pthread -fPIC -I. -Iinclude $(PC_CFLAGS) $(CFLAGS)
ALL_LDFLAGS := $(SANFLAGS) $(LDFLAGS)

MODULES  := core config logger task broker store workerpool
# The MongoDB store: every store/mongo*.c but the public reading side
# (mongo_results.c, which reaches the store through the loader), and the
# object's entry point.
MONGO_SRCS  := $(filter-out store/mongo_results.c,$(wildcard store/mongo*.c))
PLUGIN_SRCS := $(wildcard store/plugin_*.c)
MONGO_OBJS  := $(MONGO_SRCS:%.c=$(BUILD)/obj/%.o)
PLUGIN_OBJS := $(PLUGIN_SRCS:%.c=$(BUILD)/obj/%.o)
ALL_LIB_SRCS := $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
LIB_SRCS := $(filter-out $(MONGO_SRCS) $(PLUGIN_SRCS),$(ALL_LIB_SRCS))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
# The in-memory broker and store are test code: a library of their own
# that only test programs link, never part of libkiln.
MOCK_SRCS := $(wildcard mocks/*.c)
MOCK_OBJS := $(MOCK_SRCS:%.c=$(BUILD)/obj/%.o)

TEST_SRCS    := $(wildcard test/test_*.c)
# Under ThreadSanitizer every unit test but test_codec_memory: it is
# single-threaded and decodes 16 MiB bodies, where TSan adds nothing but
# minutes (it ran out of run-tests' time on a loaded machine).
TSAN_SRCS    := $(filter-out test/test_codec_memory.c,$(TEST_SRCS))
TEST_BINS    := $(TEST_SRCS:test/%.c=$(BUILD)/test/%)
IT_SRCS      := $(wildcard test/integration/test_*.c)
IT_BINS      := $(IT_SRCS:test/integration/%.c=$(BUILD)/it/%)
# The worker pool's integration tests: the ones that also run under TSan.
POOL_IT_BINS := $(filter $(BUILD)/it/test_pool_%,$(IT_BINS))
# Programs the integration tests start as separate processes.
IT_PROG_SRCS := $(wildcard test/integration/prog_*.c)
IT_PROGS     := $(IT_PROG_SRCS:test/integration/%.c=$(BUILD)/it/%)
# Long runs, kept out of `make test` (make test-long).
LONG_SRCS    := $(wildcard test/long/test_*.c)
LONG_BINS    := $(LONG_SRCS:test/long/%.c=$(BUILD)/long/%)
TEST_SUPPORT := $(wildcard test/support/*.c)
TEST_SUPPORT_OBJS := $(TEST_SUPPORT:%.c=$(BUILD)/obj/%.o)
# The support code that calls libmongoc itself: integration tests only, so
# that unit tests link no libmongoc.
STORE_SUPPORT_OBJS := $(BUILD)/obj/test/support/pool_it_store.o
UNIT_SUPPORT_OBJS := $(filter-out $(STORE_SUPPORT_OBJS),$(TEST_SUPPORT_OBJS))

# Interop tests: the driver and the kiln programs it starts, and the Go
# peer (machinery and paota), built once into build/interop with its build
# cache in build/go-cache, whatever the variant.
IOP_TEST  := $(BUILD)/interop/test_interop
IOP_PROGS := $(BUILD)/interop/prog_iop_worker
GO_PEER   := build/interop/bin/peer
GO_PEER_SRCS := $(wildcard test/interop/peer/*.go) test/interop/go.mod \
                test/interop/go.sum

BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)

EXAMPLE_SRCS := $(wildcard examples/*/main.c)
EXAMPLE_BINS := $(EXAMPLE_SRCS:examples/%/main.c=$(BUILD)/examples/%)

STATIC := $(BUILD)/libkiln.a
MOCKLIB := $(BUILD)/libkiln_mock.a
SHARED := $(BUILD)/libkiln.so.$(VERSION)
SONAME := libkiln.so.$(VERSION_MAJOR)
# The MongoDB store's object (store/plugin.h), and its code as an archive
# for the integration tests, which also call the store's internals.
PLUGIN        := $(BUILD)/libkiln-mongo.so.$(VERSION)
PLUGIN_SONAME := libkiln-mongo.so.$(VERSION_MAJOR)
PLUGIN_BASE   := $(BUILD)/obj/libkiln-base.a
STORE_AR      := $(BUILD)/libkiln-mongo.a
# Programs built here find the store object in the build folder.
RPATH := -Wl,-rpath,$(CURDIR)/$(BUILD)

.PHONY: all lib examples benches tests longs tsan-tests check check-integration check-pool-tsan check-store check-interop interop-progs test test-long lint demo deps install uninstall clean \
        fuzz tidy cppcheck format format-check symbols install-check valgrind \
        check-scripts check-snippets check-examples

all: lib examples benches

benches: $(BENCH_BINS)

lib: $(STATIC) $(SHARED) $(PLUGIN)

examples: $(EXAMPLE_BINS)

tests: $(TEST_BINS) $(IT_BINS) $(IT_PROGS) $(IOP_TEST) $(IOP_PROGS)

longs: $(LONG_BINS) $(IT_PROGS)

# What runs under ThreadSanitizer (VARIANT=tsan): the unit tests and the
# pool's integration tests with the programs they start.
tsan-tests: $(TEST_BINS) $(POOL_IT_BINS) $(IT_PROGS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

# The LIBDIR the loader looks in last; recorded so that a new PREFIX
# rebuilds the loader.
LIBDIR_STAMP := $(BUILD)/libdir.txt
$(LIBDIR_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(LIBDIR)' | cmp -s - $@ || echo '$(LIBDIR)' > $@
$(BUILD)/obj/store/load.o: $(LIBDIR_STAMP)
$(BUILD)/obj/store/load.o: ALL_CFLAGS += -DKILN__LIBDIR='"$(LIBDIR)"'

.PHONY: FORCE
FORCE:

$(STATIC): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(MOCKLIB): $(MOCK_OBJS)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(SHARED): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--no-undefined $(ALL_LDFLAGS) \
	    -o $@ $^ $(LIBS)
	ln -sf libkiln.so.$(VERSION) $(BUILD)/$(SONAME)
	ln -sf $(SONAME) $(BUILD)/libkiln.so

# The store's object: the store's code, the entry point, and the pure
# helpers it uses, pulled from an archive of libkiln's objects that leaves
# out the allocator and the logger (the host lends those). Only the entry
# point is exported (--exclude-libs hides the copies of the API functions
# among the helpers); --as-needed keeps rabbitmq-c and cJSON out.
$(PLUGIN_BASE): $(filter-out $(BUILD)/obj/core/alloc.o $(BUILD)/obj/logger/logger.o,$(LIB_OBJS))
	@rm -f $@
	ar rcs $@ $^

$(PLUGIN): $(MONGO_OBJS) $(PLUGIN_OBJS) $(PLUGIN_BASE)
	$(CC) -shared -Wl,-soname,$(PLUGIN_SONAME) -Wl,--no-undefined \
	    -Wl,--exclude-libs,ALL \
	    $(ALL_LDFLAGS) -o $@ $(MONGO_OBJS) $(PLUGIN_OBJS) $(PLUGIN_BASE) \
	    -Wl,--as-needed $(MONGO_LIBS) $(LIBS)
	ln -sf libkiln-mongo.so.$(VERSION) $(BUILD)/$(PLUGIN_SONAME)

$(STORE_AR): $(MONGO_OBJS)
	@rm -f $@
	ar rcs $@ $^

# Every test program links the same way: the shared test code, the
# mocks, then the library; the integration tests also link the store's
# code and libmongoc, which they use directly. The unit tests do not, so
# they can check what a worker without a store maps. The rpath finds the
# store object in the build folder.
TEST_LINK := $(TEST_SUPPORT_OBJS) $(MOCKLIB) $(STATIC) $(PLUGIN)
# KILN_TEST_MAKE_VERSION: test_error checks that the files named after
# VERSION hold the release the header says.
define link_test
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Wno-missing-prototypes \
	    -DKILN_TEST_MAKE_VERSION='"$(VERSION)"' -MMD -MP $< \
	    $(UNIT_SUPPORT_OBJS) -o $@ $(ALL_LDFLAGS) $(RPATH) $(MOCKLIB) $(1) \
	    $(STATIC) -lcmocka $(2) $(LIBS) -lm
endef

$(BUILD)/test/%: test/%.c $(TEST_LINK)
	$(call link_test)

$(BUILD)/it/%: test/integration/%.c $(TEST_LINK) $(STORE_AR)
	$(call link_test,$(STORE_SUPPORT_OBJS) $(STORE_AR),$(MONGO_LIBS))

$(BUILD)/interop/%: test/interop/%.c $(TEST_LINK) $(STORE_AR)
	$(call link_test,$(STORE_SUPPORT_OBJS) $(STORE_AR),$(MONGO_LIBS))

$(BUILD)/long/%: test/long/%.c $(TEST_LINK) $(STORE_AR)
	$(call link_test,$(STORE_SUPPORT_OBJS) $(STORE_AR),$(MONGO_LIBS))

# scripts/install-go.sh prints a Go new enough for go.mod, installing one
# when missing; the modules come from the proxy, pinned by go.sum.
$(GO_PEER): $(GO_PEER_SRCS) scripts/install-go.sh
	@mkdir -p $(dir $@)
	@go=$$(scripts/install-go.sh) && cd test/interop && \
	    GOCACHE=$(CURDIR)/build/go-cache GOFLAGS="-mod=readonly -buildvcs=false" \
	    GOTOOLCHAIN=local GOWORK=off "$$go" build -trimpath -o $(CURDIR)/$@ ./peer

$(BUILD)/bench/%: bench/%.c $(STATIC) $(PLUGIN)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Wno-missing-prototypes -MMD -MP $< -o $@ \
	    $(ALL_LDFLAGS) $(RPATH) $(STATIC) $(LIBS)

$(BUILD)/examples/%: examples/%/main.c $(STATIC) $(PLUGIN)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP $< -o $@ $(ALL_LDFLAGS) $(RPATH) $(STATIC) \
	    $(LIBS)

# Unit tests of one variant; VALGRIND=1 runs each binary under valgrind.
check: tests
	@scripts/run-tests.sh $(if $(VALGRIND),--valgrind) $(TEST_BINS)

# Integration tests of one variant, beside a private RabbitMQ node and a
# private FerretDB (KILN_TEST_MONGODB_URL set outside points at a MongoDB).
check-integration: tests
	@KILN_TEST_TIMEOUT=900 scripts/with-rabbitmq.sh scripts/with-ferretdb.sh \
	    scripts/run-tests.sh --summary-file build/summary-it-$(VARIANT).txt \
	    $(IT_BINS)

# The pool's integration tests of one variant (VARIANT=tsan in make test)
# beside a RabbitMQ node and a FerretDB of their own, on the ports
# KILN_RMQ_PORT + 50 and KILN_FERRETDB_PORT + 50 (defaults 17722, 17067),
# so they can run while check-integration runs beside the default ones.
# test_pool_store's eight producers send 500 tasks each instead of 5,000
# (KILN_IT_STORE_TASKS): the same paths, without minutes spent at
# FerretDB's pace.
POOL_RMQ_PORT      ?= $(shell echo $$(( $${KILN_RMQ_PORT:-17672} + 50 )))
POOL_FERRETDB_PORT ?= $(shell echo $$(( $${KILN_FERRETDB_PORT:-17017} + 50 )))
check-pool-tsan: tsan-tests
	@KILN_RMQ_PORT=$(POOL_RMQ_PORT) KILN_FERRETDB_PORT=$(POOL_FERRETDB_PORT) \
	    KILN_IT_STORE_TASKS=$${KILN_IT_STORE_TASKS:-500} \
	    KILN_TEST_TIMEOUT=900 scripts/with-rabbitmq.sh scripts/with-ferretdb.sh \
	    scripts/run-tests.sh --summary-file build/summary-it-$(VARIANT).txt \
	    $(POOL_IT_BINS)

# The MongoDB store's tests alone, beside a private FerretDB.
check-store: tests
	@scripts/with-ferretdb.sh scripts/run-tests.sh $(BUILD)/it/test_store_mongo

# kiln beside machinery v2 and paota (test/interop), on a private RabbitMQ
# node and a private FerretDB.
interop-progs: $(IOP_TEST) $(IOP_PROGS) $(GO_PEER)

check-interop: interop-progs
	@scripts/with-rabbitmq.sh scripts/with-ferretdb.sh scripts/run-tests.sh \
	    --summary-file build/summary-interop-$(VARIANT).txt $(IOP_TEST)

# The long runs, plain build (timing is what they measure), beside a
# private RabbitMQ node; the figures go to build/test-long.txt.
test-long: deps
	$(MAKE) VARIANT=plain longs
	@rm -f build/test-long.txt
	@KILN_TEST_TIMEOUT=1500 KILN_TEST_LONG_OUT=build/test-long.txt \
	    scripts/with-rabbitmq.sh scripts/run-tests.sh \
	    $(LONG_SRCS:test/long/%.c=build/plain/long/%)

deps:
	@scripts/install-deps.sh

# The example consumer and publisher end to end (scripts/demo.sh).
DEMO_TASKS ?= 10000
# DEMO_STORE=mongodb records task states in a private FerretDB as well.
DEMO_STORE ?= none
demo: deps
	$(MAKE) VARIANT=plain all
	@KILN_STORE=$(DEMO_STORE) scripts/demo.sh $(DEMO_TASKS)

# kiln beside raw rabbitmq-c, Celery, machinery and paota in one run, on a
# private RabbitMQ (and FerretDB); results in bench/results/. BENCH_QUICK=1
# for a short smoke run (scripts/bench.sh lists the other settings).
.PHONY: bench
bench: deps
	@scripts/bench-deps.sh
	$(MAKE) VARIANT=plain lib benches
	@scripts/bench.sh

# Where a worker's time goes, per task: instructions (callgrind) and heap
# allocations (memcheck) of a worker draining a backlog, on a private
# RabbitMQ (docs/performance.md shows the table it prints).
PROFILE_TASKS ?= 10000
.PHONY: profile
profile: deps
	$(MAKE) VARIANT=plain lib benches
	@scripts/profile-worker.sh $(PROFILE_TASKS)

# Everything CI runs. Each step stops the run on failure.
#
# ThreadSanitizer adds two passes without adding their time: the unit
# tests under TSan run beside the valgrind pass (valgrind runs a program
# on one core at a time, the machine has two; output in
# build/check-tsan.log, printed when both end), and the integration tests
# under ASan and the pool's under TSan run at the same time, each beside
# servers of its own (check-pool-tsan): both passes mostly wait on
# brokers, stores and timers, so together they take about as long as the
# longer one. Servers given from outside
# (KILN_TEST_AMQP_URL, KILN_TEST_MONGODB_URL) are shared, and a test that
# restarts one would disturb the other pass: then they run one after the
# other. The TSan pass's output is in build/check-pool-tsan.log, printed
# when it ends.
test: deps
	$(MAKE) lint
	$(MAKE) VARIANT=asan tests
	$(MAKE) VARIANT=tsan tsan-tests
	$(MAKE) VARIANT=asan check-snippets
	$(MAKE) VARIANT=asan check-examples
	$(MAKE) VARIANT=plain all tests
	$(MAKE) symbols
	$(MAKE) install-check
	@scripts/run-tests.sh --summary-file build/summary-asan.txt \
	    $(patsubst test/%.c,build/asan/test/%,$(TEST_SRCS))
	@scripts/run-tests.sh --summary-file build/summary-tsan.txt \
	    $(patsubst test/%.c,build/tsan/test/%,$(TSAN_SRCS)) \
	    >build/check-tsan.log 2>&1 & tsan=$$!; \
	scripts/run-tests.sh --valgrind --summary-file build/summary-valgrind.txt \
	    $(patsubst test/%.c,build/plain/test/%,$(TEST_SRCS)); vg=$$?; \
	wait $$tsan; t=$$?; \
	echo "=== the unit tests under ThreadSanitizer"; cat build/check-tsan.log; \
	[ $$vg -eq 0 ] && [ $$t -eq 0 ]
	@scripts/ferretdb.sh install
	@if [ -n "$${KILN_TEST_AMQP_URL:-}$${KILN_TEST_MONGODB_URL:-}" ]; then \
	    $(MAKE) VARIANT=asan check-integration && \
	    $(MAKE) VARIANT=tsan check-pool-tsan; \
	else \
	    $(MAKE) --no-print-directory VARIANT=tsan check-pool-tsan \
	        >build/check-pool-tsan.log 2>&1 & pool=$$!; \
	    $(MAKE) VARIANT=asan check-integration; asan=$$?; \
	    wait $$pool; tsan=$$?; \
	    echo "=== the pool's integration tests under ThreadSanitizer"; \
	    cat build/check-pool-tsan.log; \
	    [ $$asan -eq 0 ] && [ $$tsan -eq 0 ]; \
	fi
	$(MAKE) VARIANT=asan check-interop
	$(MAKE) fuzz
	@scripts/run-tests.sh --total build/summary-asan.txt \
	    build/summary-tsan.txt build/summary-valgrind.txt \
	    build/summary-snippets.txt build/summary-examples.txt \
	    build/summary-it-asan.txt build/summary-it-tsan.txt \
	    build/summary-interop-asan.txt

# Only kiln_ names may leave the library: the static archive may hold
# kiln__ internals, the shared object must export kiln_ API names only;
# the mocks (test code) are in neither; and nothing calls cJSON's parser,
# whose error position is one process-wide variable.
symbols: lib
	@bad=$$(nm -g --defined-only $(STATIC) | awk 'NF==3 && $$2 ~ /[TDBRVW]/ && $$3 !~ /^kiln_/ {print $$3}'); \
	 if [ -n "$$bad" ]; then echo "non-kiln symbols in $(STATIC):"; echo "$$bad"; exit 1; fi
	@bad=$$(nm -D --defined-only $(SHARED) | awk 'NF==3 && $$2 ~ /[TDBRVW]/ && ($$3 !~ /^kiln_/ || $$3 ~ /^kiln__/) {print $$3}'); \
	 if [ -n "$$bad" ]; then echo "non-API symbols exported by $(SHARED):"; echo "$$bad"; exit 1; fi
	@readelf -d $(SHARED) | grep -q "SONAME.*$(SONAME)" || { echo "SONAME is not $(SONAME)"; exit 1; }
	@bad=$$(nm --defined-only $(STATIC) | awk 'NF==3 && $$3 ~ /^kiln__mock_/ {print $$3}'); \
	 if [ -n "$$bad" ]; then echo "test code (mocks/) in $(STATIC):"; echo "$$bad"; exit 1; fi
	@bad=$$(nm -u $(STATIC) | awk '$$2 ~ /^cJSON_(Parse|GetErrorPtr)/ {print $$2}' | sort -u); \
	 if [ -n "$$bad" ]; then echo "$(STATIC) calls cJSON's parser, whose error position is one global (a race):"; echo "$$bad"; exit 1; fi
	@if readelf -d $(SHARED) | grep NEEDED | grep -q -e mongoc -e bson; then \
	    echo "$(SHARED) links libmongoc; only $(PLUGIN) may"; exit 1; fi
	@bad=$$(nm -D --defined-only $(PLUGIN) | awk 'NF==3 && $$2 ~ /[TDBRVW]/ && $$3 != "kiln_store_plugin_mongodb" {print $$3}'); \
	 if [ -n "$$bad" ]; then echo "$(PLUGIN) exports more than its entry point:"; echo "$$bad"; exit 1; fi
	@readelf -d $(PLUGIN) | grep -q "SONAME.*$(PLUGIN_SONAME)" || { echo "SONAME is not $(PLUGIN_SONAME)"; exit 1; }
	@if readelf -d $(PLUGIN) | grep NEEDED | grep -q rabbitmq; then \
	    echo "$(PLUGIN) links rabbitmq-c"; exit 1; fi
	@echo "symbols: only kiln_ API names exported; no test code; no cJSON parse; SONAME $(SONAME); the store object exports its entry point only"

# Every C snippet of README.md, docs/*.md and the public headers, compiled
# against this variant's library; the complete programs among them run
# (scripts/check-snippets.sh says how snippets are marked).
check-snippets: $(STATIC)
	@scripts/check-snippets.sh $(STATIC) build/summary-snippets.txt

# The example programs' command lines and exit statuses, as the README
# documents them (the part that needs no server).
check-examples: examples
	@scripts/check-examples.sh $(BUILD)/examples build/summary-examples.txt

# Installs into a scratch prefix and builds a user program with pkg-config,
# statically and against the shared library.
install-check: lib
	@scripts/install-check.sh

install: lib
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)/kiln
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/libkiln.a
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/libkiln.so.$(VERSION)
	ln -sf libkiln.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libkiln.so
	install -m 755 $(PLUGIN) $(DESTDIR)$(LIBDIR)/libkiln-mongo.so.$(VERSION)
	ln -sf libkiln-mongo.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(PLUGIN_SONAME)
	install -m 644 include/kiln.h $(DESTDIR)$(INCLUDEDIR)/kiln.h
	for h in $(wildcard include/kiln/*.h); do \
	    install -m 644 $$h $(DESTDIR)$(INCLUDEDIR)/kiln/; done
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    kiln.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/kiln.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libkiln.a $(DESTDIR)$(LIBDIR)/libkiln.so* \
	    $(DESTDIR)$(LIBDIR)/libkiln-mongo.so* \
	    $(DESTDIR)$(LIBDIR)/pkgconfig/kiln.pc $(DESTDIR)$(INCLUDEDIR)/kiln.h
	rm -rf $(DESTDIR)$(INCLUDEDIR)/kiln

# libFuzzer on the JSON decoder, bounded in time; new inputs go to the
# build folder, the checked-in seed corpus stays as it is.
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := build/fuzz
FUZZ_CFLAGS  := $(CSTD) -O1 -g $(WARN) -fsanitize=fuzzer-no-link,address,undefined \
                -fno-sanitize-recover=all -I. -Iinclude $(PC_CFLAGS)
fuzz:
	@mkdir -p $(FUZZ_BUILD)/corpus
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer test/fuzz/fuzz_decode.c $(LIB_SRCS) \
	    -o $(FUZZ_BUILD)/fuzz_decode $(LIBS) -lm
	$(FUZZ_BUILD)/fuzz_decode -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	    -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
	    $(FUZZ_BUILD)/corpus test/fuzz/corpus

# One file per run: clang-tidy 14 carries va_list state across files in one
# invocation and then reports false "uninitialized va_list" errors.
lint: format-check cppcheck tidy check-scripts

# Captured script output carries its result alone (scripts/check-scripts.sh).
check-scripts:
	@scripts/check-scripts.sh

tidy:
	@for f in $(ALL_LIB_SRCS) $(MOCK_SRCS); do \
	    clang-tidy --quiet $$f -- $(CSTD) -I. -Iinclude $(PC_CFLAGS) || exit 1; \
	done

cppcheck:
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability \
	    --inline-suppr --suppress=missingIncludeSystem -I. -Iinclude $(ALL_LIB_SRCS) \
	    $(MOCK_SRCS)

FORMAT_SRCS = $(ALL_LIB_SRCS) $(MOCK_SRCS) \
              $(wildcard core/*.h config/*.h logger/*.h task/*.h \
              broker/*.h store/*.h workerpool/*.h mocks/*.h include/*.h \
              include/kiln/*.h test/*.c test/support/*.[ch] test/fuzz/*.c \
              test/interop/*.[ch] \
              examples/*/*.c)
format:
	clang-format -i $(FORMAT_SRCS)

format-check:
	clang-format --dry-run --Werror $(FORMAT_SRCS)

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d) $(MOCK_OBJS:.o=.d) $(MONGO_OBJS:.o=.d) \
    $(PLUGIN_OBJS:.o=.d) $(TEST_SUPPORT_OBJS:.o=.d) \
    $(IOP_TEST:=.d) $(IOP_PROGS:=.d) \
    $(TEST_BINS:=.d) $(IT_BINS:=.d) $(IT_PROGS:=.d) $(LONG_BINS:=.d) \
    $(BENCH_BINS:=.d) $(EXAMPLE_BINS:=.d)
