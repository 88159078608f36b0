/*
 * kiln: a distributed task queue and worker pool for C.
 *
 * A producer builds a task signature (a name plus typed arguments) and
 * publishes it to RabbitMQ; a pool of worker threads in another process runs
 * the C function registered under that name. The wire format is the JSON of
 * Go's machinery and paota, so C and Go services can share queues.
 *
 * Conventions used throughout this header:
 *
 * - Every public symbol starts with kiln_ or KILN_.
 * - Fallible functions return kiln_err and take a final, nullable
 *   `kiln_error *err` that receives a code and a human-readable message.
 *   Constructors return a pointer, or NULL with `err` filled in.
 * - Ownership is stated beside each declaration with one of three phrases:
 *   "caller owns; free with ...", "borrowed; valid until ...", and
 *   "takes ownership".
 * - Nothing in the library calls exit() or abort(), or asserts on input.
 * - An example in these headers starts at a line "Example:", or
 *   "Example (given: DECLARATIONS):" for a fragment that takes names as
 *   given, and is indented four spaces. `make test` compiles each one
 *   (scripts/check-snippets.sh): one with a main() as a program, which it
 *   also runs, any other as the body of a function whose parameters are
 *   the given declarations.
 */
#ifndef KILN_H
#define KILN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define KILN_API          __attribute__((visibility("default")))
#define KILN_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KILN_API
#define KILN_PRINTF(f, a)
#endif

/* ------------------------------------------------------------------------
 * Version
 * ------------------------------------------------------------------------ */

#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 1
#define KILN_VERSION_PATCH 0

/* kiln_version_string returns the library's version, e.g. "0.1.0".
 * Static text; never NULL. Thread-safety: safe from any thread. */
KILN_API const char *kiln_version_string(void);

/* ------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------ */

typedef enum kiln_err {
    KILN_OK = 0,     /* not an error */
    KILN_ENOMEM,     /* allocation failed */
    KILN_EINVAL,     /* bad argument or configuration value */
    KILN_EBROKER,    /* broker (AMQP) failure; the message has the detail */
    KILN_ESTORE,     /* result store failure; the message has the detail */
    KILN_ECODEC,     /* a task message could not be encoded or decoded */
    KILN_ECLOSED,    /* the object is shutting down or closed */
    KILN_ETIMEDOUT,  /* a deadline passed */
    KILN_ENOHANDLER, /* no task function is registered under the name */
    KILN_EEXIST,     /* the name is already taken */
    KILN_ENOTFOUND,  /* no such item (argument index, task id, ...) */
    KILN_ETYPE,      /* a value has another type than the one asked for */
    KILN_ERANGE,     /* a number does not fit the asked-for type */
    KILN_ETOOBIG,    /* a message or value exceeds its size limit */
    KILN_ETASK,      /* a task function reported failure */
    KILN_ERETRY      /* a task function asked to be retried later */
} kiln_err;

/* The highest kiln_err value; lets callers and tests walk every code. */
#define KILN_ERR_LAST KILN_ERETRY

/* kiln_error carries a code and a detail message out of a fallible call.
 * Caller-owned, usually on the stack; never freed by the library. */
typedef struct kiln_error {
    kiln_err code;
    char message[256]; /* NUL-terminated detail */
} kiln_error;

/* kiln_strerror returns a short static description of `code`, and
 * "unknown error" for values outside the enum. Never NULL.
 * Thread-safety: safe from any thread. */
KILN_API const char *kiln_strerror(kiln_err code);

/* kiln_free releases memory that a kiln function returned with the phrase
 * "free with kiln_free". kiln_free(NULL) is a no-op.
 * Thread-safety: safe from any thread. */
KILN_API void kiln_free(void *ptr);

/* ------------------------------------------------------------------------
 * Logging
 * ------------------------------------------------------------------------ */

/* Syslog level numbers. A message is emitted when its level is at or below
 * the active level (KILN_LOG_ERR is the most severe). */
typedef enum kiln_log_level {
    KILN_LOG_OFF = 0, /* as an active level: log nothing */
    KILN_LOG_ERR = 3,
    KILN_LOG_WARN = 4,
    KILN_LOG_NOTICE = 5,
    KILN_LOG_INFO = 6,
    KILN_LOG_DEBUG = 7
} kiln_log_level;

typedef enum kiln_log_format {
    KILN_LOG_TEXT = 0, /* `2026-11-23T05:17:00.123Z INFO [broker] msg k=v` */
    KILN_LOG_JSON      /* one JSON object per line */
} kiln_log_format;

/* A log sink receives each finished line (without the trailing newline).
 * `line` is borrowed; valid only during the call, so copy it if kept.
 * Called from any kiln thread, possibly concurrently: a sink must be
 * thread-safe. */
typedef void (*kiln_log_fn)(kiln_log_level level, const char *line, void *user);

/* kiln_log_set_sink routes every line to `fn` with `user`; NULL restores
 * the default sink, which writes each line to stderr with one fputs.
 * Thread-safety: safe from any thread; lines already being written may
 * still reach the previous sink. */
KILN_API void kiln_log_set_sink(kiln_log_fn fn, void *user);

/* kiln_log_set_level sets the active level (default KILN_LOG_INFO).
 * Thread-safety: safe from any thread. */
KILN_API void kiln_log_set_level(kiln_log_level level);

/* kiln_log_get_level returns the active level.
 * Thread-safety: safe from any thread. */
KILN_API kiln_log_level kiln_log_get_level(void);

/* kiln_log_set_format selects text or JSON lines (default text).
 * Thread-safety: safe from any thread. */
KILN_API void kiln_log_set_format(kiln_log_format format);

/* kiln_log writes one line at `level` from `module` (e.g. "app"). Nothing is
 * formatted when the level is not active. Secrets are masked before the
 * line reaches the sink, as kiln_log_redact_url does.
 * Thread-safety: safe from any thread. */
KILN_API void kiln_log(kiln_log_level level, const char *module,
                       const char *fmt, ...) KILN_PRINTF(3, 4);

/* kiln_log_redact_url copies `url` (or any text holding URLs) into `out`
 * (size `n`, always NUL-terminated when n > 0; `out` must not overlap
 * `url`) with every secret replaced by "***": the password of each
 * scheme://user:password@host URL, from the first ':' to the last '@'
 * before the URL's query, which starts at a '?' after a '/' after an '@'
 * (raw '@', '?', '#', '/', quotes, angle brackets and backticks stay
 * inside it; whitespace ends a URL), and the value of the MongoDB options
 * tlsCertificateKeyFilePassword, sslClientCertificateKeyPassword,
 * authMechanismProperties and proxyPassword. A clipped result never holds
 * part of a secret. Returns `out`. Thread-safety: safe from any thread. */
KILN_API char *kiln_log_redact_url(const char *url, char *out, size_t n);

/* ------------------------------------------------------------------------
 * Configuration
 * ------------------------------------------------------------------------ */

#define KILN_URL_MAX  1024 /* bytes, including the NUL */
#define KILN_NAME_MAX 256  /* AMQP short strings hold 255 bytes */
#define KILN_PATH_MAX 1024

typedef enum kiln_queue_type {
    KILN_QUEUE_CLASSIC = 0,
    KILN_QUEUE_QUORUM
} kiln_queue_type;

typedef enum kiln_store_kind {
    KILN_STORE_NONE = 0, /* no task state is recorded */
    KILN_STORE_MONGODB   /* MongoDB (machinery's schema) */
} kiln_store_kind;

/* The JSON dialect the encoder writes. The decoder reads all of them. */
typedef enum kiln_dialect {
    KILN_DIALECT_MACHINERY = 0, /* machinery v1/v2 Signature */
    KILN_DIALECT_PAOTA,         /* paota Signature */
    KILN_DIALECT_PAOTA_HEADERS  /* paota raw mode: metadata in AMQP headers
                                   (see kiln_signature_to_raw) */
} kiln_dialect;

typedef enum kiln_retry_policy {
    KILN_RETRY_FIBONACCI = 0, /* machinery's: each retry waits the next
                                 Fibonacci number above RetryTimeout, in
                                 seconds (1, 2, 3, 5, 8 ... from 0), see
                                 kiln_signature_set_retry */
    KILN_RETRY_EXPONENTIAL    /* base * 2^n, capped, with full jitter */
} kiln_retry_policy;

/* What a worker does with a task whose name nobody registered, when the
 * signature does not set IgnoreWhenTaskNotRegistered (which means DROP
 * for it). Dead-lettered or dropped, the task is recorded FAILURE with
 * the reason ("unregistered task NAME", "unregistered task NAME, dropped
 * (KILN_UNREGISTERED=drop)", "unregistered task NAME, ignored
 * (IgnoreWhenTaskNotRegistered)"). */
typedef enum kiln_unregistered_policy {
    KILN_UNREGISTERED_DEADLETTER = 0, /* to the dead-letter queue */
    KILN_UNREGISTERED_REQUEUE, /* into the delay queues for 1 s, doubling up
                                  to retry_max_ms; dead-lettered once
                                  delivered max_deliveries times */
    KILN_UNREGISTERED_DROP     /* ack and log */
} kiln_unregistered_policy;

/* What a worker does with a task that arrives after its start deadline
 * (paota's TaskTimeOut counted from CreatedAt): it is recorded FAILURE
 * "expired" in both cases. */
typedef enum kiln_expired_policy {
    KILN_EXPIRED_DEADLETTER = 0, /* to the dead-letter queue */
    KILN_EXPIRED_DROP            /* ack and log */
} kiln_expired_policy;

/* kiln_config holds every setting. It is a plain value: copy it freely, no
 * pointers inside, nothing to free. kiln_config_init fills the defaults;
 * kiln_config_from_env overrides them from KILN_* variables. The README's
 * configuration table lists each field with its variable and default.
 * Thread-safety: a config is read-only once handed to the library. */
typedef struct kiln_config {
    /* broker */
    char broker_url[KILN_URL_MAX]; /* amqp[s]://user:pass@host:port/vhost;
                                      user, password and vhost %-decoded;
                                      no or an empty vhost is "/" */
    char exchange[KILN_NAME_MAX];
    char exchange_type[16]; /* direct, fanout, topic, headers
                               (lowercase) */
    char queue[KILN_NAME_MAX];
    char binding_key[KILN_NAME_MAX];
    kiln_queue_type queue_type;
    unsigned max_priority;       /* 0: no priority queue; else 1..255 */
    unsigned prefetch;           /* 1..65535 unacked deliveries */
    unsigned pool_size;          /* publishing connections, 1..64 */
    unsigned heartbeat_s;        /* 0 disables; 0..65535 */
    unsigned connect_timeout_ms; /* 1..3600000 */
    unsigned publish_timeout_ms; /* confirm wait, 1..3600000 */
    char dead_letter_exchange[KILN_NAME_MAX];
    char dead_letter_queue[KILN_NAME_MAX];
    bool queue_dlx_arg;                 /* declare the task queue with
                                           x-dead-letter-exchange; false declares it
                                           without arguments, as machinery and paota do */
    char delay_exchange[KILN_NAME_MAX]; /* prefix of the delay cascade */
    unsigned delay_levels;              /* 1..32 binary delay levels */
    unsigned delay_unit_ms;             /* duration of level 0, 1..3600000 */
    kiln_queue_type delay_queue_type;   /* of the delay levels; quorum
                                           (RabbitMQ 3.10+) moves messages
                                           between levels at least once */
    /* TLS files are read at each connect (a renewed certificate needs no
     * restart), not by kiln_config_from_env; one that cannot be loaded
     * fails the connect with KILN_EBROKER naming its variable. */
    char tls_ca[KILN_PATH_MAX];   /* amqps: CA bundle; empty = system */
    char tls_cert[KILN_PATH_MAX]; /* amqps: client certificate */
    char tls_key[KILN_PATH_MAX];  /* amqps: client key */
    bool tls_verify;              /* verify peer and host name */

    /* workers */
    unsigned concurrency;      /* worker threads, 1..1024 */
    unsigned drain_timeout_ms; /* SIGTERM drain limit, 0 = none,
                                  at most 30 days */
    size_t max_body_bytes;     /* largest body, 1024..536870912 */
    kiln_retry_policy retry_policy;
    unsigned retry_base_ms;  /* exponential base, 1..3600000 */
    unsigned retry_max_ms;   /* cap, 1..2592000000 (30 days) */
    unsigned max_deliveries; /* poison limit, 1..1000000 */
    kiln_unregistered_policy unregistered;
    kiln_expired_policy expired;
    unsigned time_limit_ms;       /* default soft limit, 0 = none,
                                     at most 30 days */
    unsigned consumer_timeout_ms; /* the broker's consumer_timeout (RabbitMQ
                                     closes a channel holding a delivery
                                     unacked that long); kiln keeps no
                                     delivery unacked past half of it.
                                     0 = the broker has none */
    bool handle_signals;          /* kiln_pool_start drains on SIGINT and
                                     SIGTERM; false leaves every signal to the
                                     program, which stops with kiln_pool_stop */

    /* wire */
    kiln_dialect dialect;

    /* store */
    kiln_store_kind store;
    char mongodb_url[KILN_URL_MAX];
    char mongodb_database[KILN_NAME_MAX];
    unsigned results_expire_s;        /* TTL of task documents, 0 = keep,
                                         at most 2147483647 */
    char store_plugin[KILN_PATH_MAX]; /* the MongoDB store's object,
                                         libkiln-mongo.so.0; empty = look
                                         beside libkiln, then the loader's
                                         path, then the install LIBDIR */

    /* logging */
    kiln_log_level log_level;
    kiln_log_format log_format;
} kiln_config;

/* kiln_config_init fills `cfg` with the defaults. Never fails.
 * Thread-safety: safe from any thread on distinct configs. */
KILN_API void kiln_config_init(kiln_config *cfg);

/* kiln_config_from_env reads the KILN_* environment variables (and paota's
 * PAOTA_* names where kiln has the same setting; a KILN_* variable wins)
 * over the values already in `cfg`, then validates the result. On any bad
 * value it returns KILN_EINVAL, names the variable, the value and what is
 * accepted in `err`, and leaves `cfg` untouched.
 * Thread-safety: reads the environment; do not call while another thread
 * calls setenv. */
KILN_API kiln_err kiln_config_from_env(kiln_config *cfg, kiln_error *err);

/* kiln_config_validate checks every field of `cfg` (ranges, enum values,
 * URL schemes, names that fit AMQP). Returns KILN_OK or KILN_EINVAL with
 * the field's variable name in `err`. Thread-safety: read-only on cfg. */
KILN_API kiln_err kiln_config_validate(const kiln_config *cfg, kiln_error *err);

/* ------------------------------------------------------------------------
 * Typed values (machinery's 29 argument types)
 * ------------------------------------------------------------------------ */

/* The names in comments are the Go type strings used on the wire. */
typedef enum kiln_type {
    KILN_TYPE_BOOL = 0,     /* "bool" */
    KILN_TYPE_INT,          /* "int" (64-bit, as Go on 64-bit machines) */
    KILN_TYPE_INT8,         /* "int8" */
    KILN_TYPE_INT16,        /* "int16" */
    KILN_TYPE_INT32,        /* "int32" */
    KILN_TYPE_INT64,        /* "int64" */
    KILN_TYPE_UINT,         /* "uint" (64-bit) */
    KILN_TYPE_UINT8,        /* "uint8" */
    KILN_TYPE_UINT16,       /* "uint16" */
    KILN_TYPE_UINT32,       /* "uint32" */
    KILN_TYPE_UINT64,       /* "uint64" */
    KILN_TYPE_FLOAT32,      /* "float32" */
    KILN_TYPE_FLOAT64,      /* "float64" */
    KILN_TYPE_STRING,       /* "string" */
    KILN_TYPE_BOOL_SLICE,   /* "[]bool" */
    KILN_TYPE_INT_SLICE,    /* "[]int" */
    KILN_TYPE_INT8_SLICE,   /* "[]int8" */
    KILN_TYPE_INT16_SLICE,  /* "[]int16" */
    KILN_TYPE_INT32_SLICE,  /* "[]int32" */
    KILN_TYPE_INT64_SLICE,  /* "[]int64" */
    KILN_TYPE_UINT_SLICE,   /* "[]uint" */
    KILN_TYPE_UINT8_SLICE,  /* "[]uint8": base64 on the wire, as Go writes it */
    KILN_TYPE_UINT16_SLICE, /* "[]uint16" */
    KILN_TYPE_UINT32_SLICE, /* "[]uint32" */
    KILN_TYPE_UINT64_SLICE, /* "[]uint64" */
    KILN_TYPE_FLOAT32_SLICE, /* "[]float32" */
    KILN_TYPE_FLOAT64_SLICE, /* "[]float64" */
    KILN_TYPE_STRING_SLICE,  /* "[]string" */
    KILN_TYPE_BYTES          /* "[]byte": base64 on the wire */
} kiln_type;

#define KILN_TYPE_LAST KILN_TYPE_BYTES

/* kiln_type_name returns the Go type string of `t` ("int64", "[]byte"), or
 * NULL for a value outside the enum. Static text. Thread-safe. */
KILN_API const char *kiln_type_name(kiln_type t);

/* kiln_type_from_name maps a Go type string to its kiln_type. Returns
 * KILN_OK, or KILN_ETYPE when the name is NULL or not one of the 29.
 * Thread-safe. */
KILN_API kiln_err kiln_type_from_name(const char *name, kiln_type *out);

/* ------------------------------------------------------------------------
 * Task signatures
 * ------------------------------------------------------------------------ */

/* A signature is one task invocation: a UUID, a task name, positional typed
 * arguments and delivery options. Opaque.
 * Thread-safety: a signature may be read from several threads at once, but
 * must not be modified while another thread uses it. */
typedef struct kiln_signature kiln_signature;

/* kiln_signature_new creates a signature for the task `name` with a fresh
 * "task_<uuid4>" UUID and no arguments.
 * Returns: caller owns; free with kiln_signature_free. NULL when `name` is
 * NULL or empty (KILN_EINVAL) or memory ran out (KILN_ENOMEM), with `err`
 * filled in. Thread-safety: safe from any thread. */
KILN_API kiln_signature *kiln_signature_new(const char *name, kiln_error *err);

/* kiln_signature_copy makes a deep copy of `sig`, including unknown keys
 * kept from a decoded message. Returns: caller owns; free with
 * kiln_signature_free; NULL with `err` on failure. */
KILN_API kiln_signature *kiln_signature_copy(const kiln_signature *sig,
                                             kiln_error *err);

/* kiln_signature_free releases `sig` and everything it owns. NULL is a
 * no-op. */
KILN_API void kiln_signature_free(kiln_signature *sig);

/* Accessors. Strings are borrowed; valid until the signature is modified
 * or freed. Never NULL: an absent string is "". */
KILN_API const char *kiln_signature_uuid(const kiln_signature *sig);
KILN_API const char *kiln_signature_name(const kiln_signature *sig);
KILN_API const char *kiln_signature_routing_key(const kiln_signature *sig);
KILN_API const char *kiln_signature_group_uuid(const kiln_signature *sig);
KILN_API unsigned kiln_signature_priority(const kiln_signature *sig);
KILN_API int kiln_signature_retry_count(const kiln_signature *sig);
KILN_API int kiln_signature_retry_timeout(const kiln_signature *sig);
KILN_API int kiln_signature_retries_done(const kiln_signature *sig);
KILN_API int kiln_signature_task_timeout(const kiln_signature *sig);
KILN_API bool kiln_signature_ignore_unregistered(const kiln_signature *sig);

/* kiln_signature_eta stores the ETA as nanoseconds since the Unix epoch in
 * *unix_ns and returns true, or returns false when the task has no ETA. */
KILN_API bool kiln_signature_eta(const kiln_signature *sig, int64_t *unix_ns);

/* kiln_signature_created_at: as kiln_signature_eta, for paota's CreatedAt
 * (the start of TaskTimeOut; see kiln_signature_set_created_at). */
KILN_API bool kiln_signature_created_at(const kiln_signature *sig,
                                        int64_t *unix_ns);

/* Setters copy their string arguments. They return KILN_EINVAL for a NULL
 * or oversized string (and for a priority above 255 or a negative count),
 * KILN_ENOMEM when a copy fails; the signature is unchanged on failure. */
KILN_API kiln_err kiln_signature_set_uuid(kiln_signature *sig, const char *uuid,
                                          kiln_error *err);
KILN_API kiln_err kiln_signature_set_routing_key(kiln_signature *sig,
                                                 const char *key,
                                                 kiln_error *err);
KILN_API kiln_err kiln_signature_set_group(kiln_signature *sig,
                                           const char *group_uuid,
                                           int group_task_count,
                                           kiln_error *err);
/* priority: the message's AMQP priority, 0 (the default) for none. It is
 * sent whatever this process's cfg->max_priority, which only shapes the
 * queue this process declares: a queue declared with x-max-priority N
 * (KILN_MAX_PRIORITY=N) orders by it, treating more than N as N; any
 * other queue ignores it. */
KILN_API kiln_err kiln_signature_set_priority(kiln_signature *sig,
                                              unsigned priority,
                                              kiln_error *err);
/* retry_count: the retries allowed. retry_timeout: machinery's
 * RetryTimeout, in seconds, where the Fibonacci waits start: under
 * KILN_RETRY_FIBONACCI each retry sets it to the smallest Fibonacci number
 * greater than it and waits that many seconds (machinery's
 * retry.FibonacciNext), so 0 (the default) gives waits of 1, 2, 3, 5, 8
 * ... s and 10 gives 13, 21 ... s; it is not the first wait. Every wait
 * is capped by KILN_RETRY_MAX_MS. KILN_RETRY_EXPONENTIAL ignores it. */
KILN_API kiln_err kiln_signature_set_retry(kiln_signature *sig, int retry_count,
                                           int retry_timeout, kiln_error *err);
/* task_timeout_s: paota's TaskTimeOut, seconds; 0 = none. A task
 * delivered more than that many seconds after its CreatedAt is not run: a
 * worker records it FAILURE "expired" (KILN_EXPIRED says what happens to
 * the message). kiln_pool_send_task(s) give a signature without a
 * CreatedAt the time it is sent, in every dialect, so setting this alone
 * makes a task that expires. */
KILN_API kiln_err kiln_signature_set_task_timeout(kiln_signature *sig,
                                                  int task_timeout_s,
                                                  kiln_error *err);
KILN_API void kiln_signature_set_ignore_unregistered(kiln_signature *sig,
                                                     bool ignore);
/* kiln_signature_set_eta sets the ETA in nanoseconds since the Unix epoch
 * (written in UTC); kiln_signature_clear_eta removes it. Any value is
 * accepted: an ETA in the past is due at once, and sending one further
 * ahead than the delay queues hold fails with KILN_EINVAL ("longer than
 * the delay queues hold"). The ETA is a wall-clock time, compared with
 * each worker's CLOCK_REALTIME, so a countdown is CLOCK_REALTIME now plus
 * the delay (never CLOCK_MONOTONIC, which counts from boot), and producer
 * and worker clocks must agree (NTP): a skew moves the start by as much.
 * A task due in 30 seconds:
 *
 * Example (given: kiln_signature *sig):
 *
 *     struct timespec now;
 *
 *     clock_gettime(CLOCK_REALTIME, &now);
 *     kiln_signature_set_eta(sig, (int64_t)now.tv_sec * 1000000000 +
 *                                     now.tv_nsec + 30 * INT64_C(1000000000));
 */
KILN_API void kiln_signature_set_eta(kiln_signature *sig, int64_t unix_ns);
KILN_API void kiln_signature_clear_eta(kiln_signature *sig);
/* kiln_signature_set_created_at sets paota's CreatedAt, in nanoseconds
 * since the Unix epoch (written in UTC; header mode keeps whole seconds),
 * the instant TaskTimeOut counts from; kiln_signature_clear_created_at
 * removes it. Without one, kiln_pool_send_task(s) write the time of
 * sending into the message, as paota's producer does, and leave `sig` as
 * it is: in the paota dialects always, in the machinery dialect only when
 * the signature has a TaskTimeOut (machinery's Signature has no
 * CreatedAt; the key then follows machinery's own, which Go ignores). Set
 * it to count the deadline from an earlier moment, such as when the
 * request arrived. */
KILN_API void kiln_signature_set_created_at(kiln_signature *sig,
                                            int64_t unix_ns);
KILN_API void kiln_signature_clear_created_at(kiln_signature *sig);

/* ---- arguments: setters ------------------------------------------------
 * Each adds one positional argument at the end. `name` may be NULL (Go
 * writes "" then). Values are copied. The `type` forms take the exact Go
 * type and check the value's range (KILN_ERANGE) and that `type` belongs
 * to the function's family (KILN_EINVAL). The signature is unchanged on
 * failure. Thread-safety: not while other threads use `sig`. */
KILN_API kiln_err kiln_signature_add_arg_bool(kiln_signature *sig,
                                              const char *name, bool v,
                                              kiln_error *err);
/* type: KILN_TYPE_INT, INT8, INT16, INT32 or INT64 */
KILN_API kiln_err kiln_signature_add_arg_int(kiln_signature *sig,
                                             const char *name, kiln_type type,
                                             int64_t v, kiln_error *err);
/* type: KILN_TYPE_UINT, UINT8, UINT16, UINT32 or UINT64 */
KILN_API kiln_err kiln_signature_add_arg_uint(kiln_signature *sig,
                                              const char *name, kiln_type type,
                                              uint64_t v, kiln_error *err);
/* type: KILN_TYPE_FLOAT32 or FLOAT64; NaN and infinities are refused
 * (KILN_EINVAL) because JSON cannot carry them. A float32 is rounded to
 * the nearest float; magnitudes beyond FLT_MAX give KILN_ERANGE. */
KILN_API kiln_err kiln_signature_add_arg_float(kiln_signature *sig,
                                               const char *name, kiln_type type,
                                               double v, kiln_error *err);
/* Shorthands for the commonest types. */
KILN_API kiln_err kiln_signature_add_arg_int64(kiln_signature *sig,
                                               const char *name, int64_t v,
                                               kiln_error *err);
KILN_API kiln_err kiln_signature_add_arg_uint64(kiln_signature *sig,
                                                const char *name, uint64_t v,
                                                kiln_error *err);
KILN_API kiln_err kiln_signature_add_arg_float64(kiln_signature *sig,
                                                 const char *name, double v,
                                                 kiln_error *err);
/* `v` must be valid UTF-8 (KILN_EINVAL otherwise). */
KILN_API kiln_err kiln_signature_add_arg_string(kiln_signature *sig,
                                                const char *name, const char *v,
                                                kiln_error *err);
/* "[]byte"; `data` may be NULL when n is 0. */
KILN_API kiln_err kiln_signature_add_arg_bytes(kiln_signature *sig,
                                               const char *name,
                                               const void *data, size_t n,
                                               kiln_error *err);
/* Slices. `v` may be NULL when n is 0. */
KILN_API kiln_err kiln_signature_add_arg_bool_slice(kiln_signature *sig,
                                                    const char *name,
                                                    const bool *v, size_t n,
                                                    kiln_error *err);
/* type: KILN_TYPE_INT_SLICE, INT8_SLICE ... INT64_SLICE */
KILN_API kiln_err kiln_signature_add_arg_int_slice(kiln_signature *sig,
                                                   const char *name,
                                                   kiln_type type,
                                                   const int64_t *v, size_t n,
                                                   kiln_error *err);
/* type: KILN_TYPE_UINT_SLICE, UINT16_SLICE, UINT32_SLICE, UINT64_SLICE;
 * for []uint8 use kiln_signature_add_arg_uint8_slice. */
KILN_API kiln_err kiln_signature_add_arg_uint_slice(kiln_signature *sig,
                                                    const char *name,
                                                    kiln_type type,
                                                    const uint64_t *v, size_t n,
                                                    kiln_error *err);
KILN_API kiln_err kiln_signature_add_arg_uint8_slice(kiln_signature *sig,
                                                     const char *name,
                                                     const uint8_t *v, size_t n,
                                                     kiln_error *err);
/* type: KILN_TYPE_FLOAT32_SLICE or FLOAT64_SLICE */
KILN_API kiln_err kiln_signature_add_arg_float_slice(kiln_signature *sig,
                                                     const char *name,
                                                     kiln_type type,
                                                     const double *v, size_t n,
                                                     kiln_error *err);
KILN_API kiln_err kiln_signature_add_arg_string_slice(kiln_signature *sig,
                                                      const char *name,
                                                      const char *const *v,
                                                      size_t n,
                                                      kiln_error *err);

/* ---- arguments: getters ------------------------------------------------
 * Arguments are positional, from 0. An index past the end gives
 * KILN_ENOTFOUND; a value of another family gives KILN_ETYPE, and an
 * integer that does not fit gives KILN_ERANGE; the message names the index
 * and both types. *out is untouched on failure. Borrowed pointers are valid
 * until the signature is modified or freed; a slice getter's *out may be
 * NULL when *n is 0. Thread-safety: safe from several threads at once. */
KILN_API size_t kiln_signature_arg_count(const kiln_signature *sig);
/* The argument's type; KILN_ENOTFOUND past the end. */
KILN_API kiln_err kiln_signature_arg_type(const kiln_signature *sig, size_t i,
                                          kiln_type *out, kiln_error *err);
/* The argument's name, "" when unnamed; NULL past the end. Borrowed. */
KILN_API const char *kiln_signature_arg_name(const kiln_signature *sig,
                                             size_t i);
KILN_API kiln_err kiln_signature_arg_bool(const kiln_signature *sig, size_t i,
                                          bool *out, kiln_error *err);
/* Any integer type whose value fits in int64_t. */
KILN_API kiln_err kiln_signature_arg_int64(const kiln_signature *sig, size_t i,
                                           int64_t *out, kiln_error *err);
/* Any integer type whose value is 0 or more. */
KILN_API kiln_err kiln_signature_arg_uint64(const kiln_signature *sig, size_t i,
                                            uint64_t *out, kiln_error *err);
/* float32 or float64 (a float32 is widened exactly). */
KILN_API kiln_err kiln_signature_arg_double(const kiln_signature *sig, size_t i,
                                            double *out, kiln_error *err);
/* Borrowed, NUL-terminated UTF-8. */
KILN_API kiln_err kiln_signature_arg_string(const kiln_signature *sig, size_t i,
                                            const char **out, kiln_error *err);
/* "[]byte" or "[]uint8". Borrowed; *out may be NULL when *n is 0. */
KILN_API kiln_err kiln_signature_arg_bytes(const kiln_signature *sig, size_t i,
                                           const uint8_t **out, size_t *n,
                                           kiln_error *err);
KILN_API kiln_err kiln_signature_arg_bool_slice(const kiln_signature *sig,
                                                size_t i, const bool **out,
                                                size_t *n, kiln_error *err);
/* "[]int", "[]int8" ... "[]int64", widened to int64_t. Borrowed. */
KILN_API kiln_err kiln_signature_arg_int64_slice(const kiln_signature *sig,
                                                 size_t i, const int64_t **out,
                                                 size_t *n, kiln_error *err);
/* "[]uint", "[]uint16", "[]uint32", "[]uint64", widened. Borrowed. */
KILN_API kiln_err kiln_signature_arg_uint64_slice(const kiln_signature *sig,
                                                  size_t i,
                                                  const uint64_t **out,
                                                  size_t *n, kiln_error *err);
/* "[]float32" or "[]float64", widened to double. Borrowed. */
KILN_API kiln_err kiln_signature_arg_double_slice(const kiln_signature *sig,
                                                  size_t i, const double **out,
                                                  size_t *n, kiln_error *err);
/* "[]string". Borrowed array of borrowed strings. */
KILN_API kiln_err kiln_signature_arg_string_slice(const kiln_signature *sig,
                                                  size_t i,
                                                  const char *const **out,
                                                  size_t *n, kiln_error *err);

/* ---- JSON ---------------------------------------------------------------
 * The codec reads and writes the JSON that Go's encoding/json writes for
 * machinery's and paota's Signature. */

/* kiln_signature_to_json encodes `sig` in `dialect` (KILN_DIALECT_MACHINERY
 * or KILN_DIALECT_PAOTA; for the header mode see kiln_signature_to_raw).
 * Keys kiln does not know, kept from a decoded message, are written back.
 * On success *out is a NUL-terminated string, caller owns; free with
 * kiln_free, and *len (may be NULL) its length.
 * Thread-safety: safe from any thread; `sig` is only read. */
KILN_API kiln_err kiln_signature_to_json(const kiln_signature *sig,
                                         kiln_dialect dialect, char **out,
                                         size_t *len, kiln_error *err);

/* kiln_signature_from_json decodes a message body of `len` bytes (no NUL
 * needed) in either dialect. Bodies over `max_len` bytes are refused with
 * KILN_ETOOBIG (0 means kiln's default of 16 MiB). Errors are KILN_ECODEC
 * with the field and the reason in `err`, e.g. "Args[2].Value: want int64,
 * got string". Memory: the decoded signature takes at most about 4 times
 * the body (paota's RawArgs up to 6 times when made only of <, > and &,
 * which are kept escaped as Go writes them). Values kept verbatim
 * (unknown keys, Headers, callbacks) may take at most 8 times the body +
 * 1 MiB; a body whose verbatim values would take more is refused with
 * KILN_ETOOBIG ("... kept verbatim would take about N bytes ..."), before
 * any of that memory is allocated. On success *out is caller owns; free
 * with kiln_signature_free. Thread-safety: safe from any thread. */
KILN_API kiln_err kiln_signature_from_json(const char *json, size_t len,
                                           size_t max_len, kiln_signature **out,
                                           kiln_error *err);

/* Paota's header mode: the body is any JSON (the task's raw argument) and
 * the metadata rides in AMQP headers. kiln_headers is a flat list of
 * string/number header values, the subset of an AMQP table that mode uses. */
typedef struct kiln_header {
    const char *key;   /* borrowed */
    const char *value; /* borrowed; numbers are written in decimal */
} kiln_header;

/* kiln_signature_raw_body returns paota's RawArgs (the raw JSON body of a
 * header-mode message), or NULL when there is none. Borrowed; valid until
 * the signature is modified or freed. *len (may be NULL) gets its size. */
KILN_API const char *kiln_signature_raw_body(const kiln_signature *sig,
                                             size_t *len);

/* kiln_signature_set_raw_body sets paota's RawArgs to a copy of `json`,
 * which must be one JSON value as Go reads it (RFC 8259: no leading
 * zeros, no trailing commas; UTF-8; nested at most 128 deep), else
 * KILN_ECODEC naming the byte where it goes wrong, and the signature
 * keeps its previous body. Thread-safety: safe from any thread on
 * different signatures (it parses with no shared state). */
KILN_API kiln_err kiln_signature_set_raw_body(kiln_signature *sig,
                                              const char *json, size_t len,
                                              kiln_error *err);

/* kiln_signature_to_raw produces a header-mode message: *body (the raw
 * body; caller owns; free with kiln_free) and *headers, an array of *n
 * headers whose strings live inside the same allocation (caller owns; free
 * the array with one kiln_free). As paota does, a signature without a raw
 * body becomes paota's JSON (typed Args included) with no headers. One
 * with both a raw body and typed arguments is refused with KILN_EINVAL:
 * header mode carries the raw body alone, so the arguments would be lost
 * (send it in the paota JSON dialect, which carries both). */
KILN_API kiln_err kiln_signature_to_raw(const kiln_signature *sig, char **body,
                                        size_t *body_len, kiln_header **headers,
                                        size_t *n, kiln_error *err);

/* kiln_signature_from_raw decodes a header-mode message: `headers` must
 * carry at least task_name; uuid, retry_count, retries_done, timeout, eta
 * and the other paota headers are read when present. On success *out is
 * caller owns; free with kiln_signature_free. */
KILN_API kiln_err kiln_signature_from_raw(const char *body, size_t len,
                                          const kiln_header *headers, size_t n,
                                          size_t max_len, kiln_signature **out,
                                          kiln_error *err);

/* kiln_uuid_new writes a fresh "task_<uuid4>" (41 characters, 42 bytes
 * with the NUL) into `out`. Uses the kernel's random source. Returns
 * KILN_EINVAL when `n` is too small. Thread-safety: safe from any thread. */
#define KILN_UUID_LEN 42
KILN_API kiln_err kiln_uuid_new(char *out, size_t n, kiln_error *err);

/* ------------------------------------------------------------------------
 * Task functions and their context
 * ------------------------------------------------------------------------ */

/* The context a task function runs with. Opaque; borrowed by the task
 * function for the duration of the call only.
 * Thread-safety: use it only from the thread running the task. */
typedef struct kiln_task_ctx kiln_task_ctx;

/* A task function. Return KILN_OK on success; return the value of
 * kiln_task_fail (KILN_ETASK) on failure, or of kiln_task_retry (KILN_ERETRY)
 * to be run again later. Any other code counts as failure with that code's
 * text. `user` is the pointer given when the function was registered.
 * Runs on a worker thread with no library lock held. */
typedef kiln_err (*kiln_task_fn)(kiln_task_ctx *ctx, void *user);

/* Borrowed; valid for the duration of the task call. */
KILN_API const char *kiln_task_uuid(const kiln_task_ctx *ctx);
KILN_API const char *kiln_task_name(const kiln_task_ctx *ctx);
KILN_API const kiln_signature *kiln_task_signature(const kiln_task_ctx *ctx);

/* kiln_task_attempt says which run of the task this is: 1 the first time,
 * then one more for each retry the task had, whether a failure caused it
 * or the task asked for it with kiln_task_retry; so it is the retries
 * before this run + 1, in every dialect (machinery counts RetryCount down,
 * paota RetriesDone up; this counts the same way for both). A redelivery
 * is not a new attempt: a run cut short by a crash or a lost connection
 * and run again has the same number (kiln_result_attempts, in the store,
 * counts those runs too). It comes from what the message carries: the
 * x-kiln-retries header kiln's workers write on every retry, and paota's
 * RetriesDone; a retry made by a Go machinery worker, whose message says
 * only how many retries are left, is not counted. In eager mode
 * (kiln_registry_run) it is RetriesDone + 1 for a paota signature, else 1.
 * Returns 0 for a NULL context. Any thread holding the context. */
KILN_API unsigned kiln_task_attempt(const kiln_task_ctx *ctx);

/* kiln_task_fail records a failure message (printf-style) and returns
 * KILN_ETASK, so a task can `return kiln_task_fail(ctx, "no user %d", id);` */
KILN_API kiln_err kiln_task_fail(kiln_task_ctx *ctx, const char *fmt, ...)
    KILN_PRINTF(2, 3);

/* kiln_task_retry asks to run the task again after `delay_ms` without
 * using up its retry count (machinery's ErrRetryTaskLater), and returns
 * KILN_ERETRY for the task to return. Any value is accepted: a delay
 * longer than KILN_RETRY_MAX_MS (kiln_config.retry_max_ms, one hour by
 * default) is capped to it, so even UINT64_MAX means "after the cap". */
KILN_API kiln_err kiln_task_retry(kiln_task_ctx *ctx, uint64_t delay_ms);

/* The task's soft time limit (KILN_TIME_LIMIT_MS, or the one given with
 * kiln_pool_set_time_limit). A run that reaches it is recorded as FAILURE
 * "time limit" whatever it returns, its results dropped: a run reaches
 * it when kiln_task_expired became true during it, or when it returns at
 * or after the deadline. So a long task should check and stop, and
 * stopping for the limit is a failure: kiln_task_time_left_ms returns the
 * milliseconds left (0 once reached), or INT64_MAX when the task has no
 * limit; kiln_task_expired is true from the deadline on. Any thread
 * holding the context. */
KILN_API int64_t kiln_task_time_left_ms(const kiln_task_ctx *ctx);
KILN_API bool kiln_task_expired(const kiln_task_ctx *ctx);

/* Results, stored as machinery stores them ([{Type, Value}], no names).
 * Each call appends one typed value, of any of the 29 types, with the
 * rules of the kiln_signature_add_arg_* setter of the same name: the
 * `type` forms take the exact Go type of their family (KILN_EINVAL
 * otherwise) and check its range (KILN_ERANGE), floats must be finite,
 * strings valid UTF-8, and a slice's `v` may be NULL when n is 0. Values
 * are copied; the results are unchanged on failure, and the message
 * names the result's index ("result 2: ..."). A task that adds none
 * allocates nothing for them. Thread-safety: the thread running the
 * task only. */
KILN_API kiln_err kiln_task_add_result_bool(kiln_task_ctx *ctx, bool v,
                                            kiln_error *err);
KILN_API kiln_err kiln_task_add_result_int(kiln_task_ctx *ctx, kiln_type type,
                                           int64_t v, kiln_error *err);
KILN_API kiln_err kiln_task_add_result_uint(kiln_task_ctx *ctx, kiln_type type,
                                            uint64_t v, kiln_error *err);
KILN_API kiln_err kiln_task_add_result_float(kiln_task_ctx *ctx, kiln_type type,
                                             double v, kiln_error *err);
KILN_API kiln_err kiln_task_add_result_string(kiln_task_ctx *ctx, const char *v,
                                              kiln_error *err);
/* "[]byte"; `data` may be NULL when n is 0. */
KILN_API kiln_err kiln_task_add_result_bytes(kiln_task_ctx *ctx,
                                             const void *data, size_t n,
                                             kiln_error *err);
/* Slices, as kiln_signature_add_arg_*_slice. */
KILN_API kiln_err kiln_task_add_result_bool_slice(kiln_task_ctx *ctx,
                                                  const bool *v, size_t n,
                                                  kiln_error *err);
/* type: KILN_TYPE_INT_SLICE, INT8_SLICE ... INT64_SLICE */
KILN_API kiln_err kiln_task_add_result_int_slice(kiln_task_ctx *ctx,
                                                 kiln_type type,
                                                 const int64_t *v, size_t n,
                                                 kiln_error *err);
/* type: KILN_TYPE_UINT_SLICE, UINT16_SLICE, UINT32_SLICE, UINT64_SLICE;
 * for []uint8 use kiln_task_add_result_uint8_slice. */
KILN_API kiln_err kiln_task_add_result_uint_slice(kiln_task_ctx *ctx,
                                                  kiln_type type,
                                                  const uint64_t *v, size_t n,
                                                  kiln_error *err);
KILN_API kiln_err kiln_task_add_result_uint8_slice(kiln_task_ctx *ctx,
                                                   const uint8_t *v, size_t n,
                                                   kiln_error *err);
/* type: KILN_TYPE_FLOAT32_SLICE or FLOAT64_SLICE */
KILN_API kiln_err kiln_task_add_result_float_slice(kiln_task_ctx *ctx,
                                                   kiln_type type,
                                                   const double *v, size_t n,
                                                   kiln_error *err);
KILN_API kiln_err kiln_task_add_result_string_slice(kiln_task_ctx *ctx,
                                                    const char *const *v,
                                                    size_t n, kiln_error *err);

/* kiln_task_results gives the results added so far as a borrowed,
 * argument-shaped view: read them with the kiln_signature_arg_* getters.
 * Never NULL. Valid until the context ends. */
KILN_API const kiln_signature *kiln_task_results(const kiln_task_ctx *ctx);

/* kiln_task_log writes a log line tagged with the task's UUID and name. */
KILN_API void kiln_task_log(const kiln_task_ctx *ctx, kiln_log_level level,
                            const char *fmt, ...) KILN_PRINTF(3, 4);

/* ------------------------------------------------------------------------
 * Registry: task name -> function
 * ------------------------------------------------------------------------ */

/* A registry maps task names to functions with user data. Opaque.
 * Thread-safety: registration and look-ups are safe from any thread. */
typedef struct kiln_registry kiln_registry;

/* One row of a registration table (kiln_registry_add_table). */
typedef struct kiln_task_def {
    const char *name;
    kiln_task_fn fn;
    void *user; /* may be NULL */
    void (*user_free)(
        void *); /* may be NULL; called when the registry is freed */
} kiln_task_def;

/* kiln_registry_new: caller owns; free with kiln_registry_free. NULL with
 * `err` on ENOMEM. */
KILN_API kiln_registry *kiln_registry_new(kiln_error *err);

/* kiln_registry_free releases the registry and calls each user_free on its
 * user data. NULL is a no-op. No other thread may use it any more. */
KILN_API void kiln_registry_free(kiln_registry *reg);

/* kiln_registry_add registers `fn` under `name` (copied). A name already
 * registered gives KILN_EEXIST; an empty name or NULL fn KILN_EINVAL.
 * On success the registry takes ownership of `user` (released with
 * `user_free` when not NULL); on failure the caller keeps it. */
KILN_API kiln_err kiln_registry_add(kiln_registry *reg, const char *name,
                                    kiln_task_fn fn, void *user,
                                    void (*user_free)(void *), kiln_error *err);

/* kiln_registry_add_table registers `n` rows, all or none: on failure no
 * row is registered and the caller keeps every user pointer. */
KILN_API kiln_err kiln_registry_add_table(kiln_registry *reg,
                                          const kiln_task_def *defs, size_t n,
                                          kiln_error *err);

/* kiln_registry_set_time_limit gives the task registered under `name` a
 * soft time limit of its own (0: back to the default, KILN_TIME_LIMIT_MS).
 * KILN_ENOHANDLER when nothing is registered under it. Thread-safe. */
KILN_API kiln_err kiln_registry_set_time_limit(kiln_registry *reg,
                                               const char *name,
                                               unsigned time_limit_ms,
                                               kiln_error *err);

/* kiln_registry_lookup finds `name`. Returns KILN_OK and sets *fn and
 * *user (either may be NULL), or KILN_ENOHANDLER. */
KILN_API kiln_err kiln_registry_lookup(const kiln_registry *reg,
                                       const char *name, kiln_task_fn *fn,
                                       void **user);

/* kiln_registry_count returns the number of registered names. */
KILN_API size_t kiln_registry_count(const kiln_registry *reg);

/* kiln_registry_run runs `sig` eagerly on the calling thread: looks up its
 * name, builds a context, calls the function and returns what it returned
 * (KILN_ENOHANDLER when nothing is registered). When `results` is not NULL
 * it receives the task's results (caller owns; free with
 * kiln_signature_free): on KILN_OK always set, an empty list when the task
 * added none; NULL on any other return. `err` gets the failure message on
 * KILN_ETASK.
 * Useful for tests and for running a task in-process without a broker. */
KILN_API kiln_err kiln_registry_run(const kiln_registry *reg,
                                    const kiln_signature *sig,
                                    kiln_signature **results, kiln_error *err);

/* ------------------------------------------------------------------------
 * Worker pool
 * ------------------------------------------------------------------------ */

/* A pool runs registered task functions on `concurrency` worker threads,
 * fed by one consumer thread that owns its broker connection, and sends
 * tasks through a small set of publishing connections. Opaque.
 * Thread-safety: kiln_pool_send_task(s) and kiln_pool_stop are safe from
 * any thread, including from inside a task; register before start; start
 * from one thread; free once start has returned and no thread uses it. */
typedef struct kiln_pool kiln_pool;

/* kiln_pool_new creates a pool for `cfg` (copied; validated here, so a bad
 * value is a KILN_EINVAL naming the setting) and applies its log level
 * and format to the process-wide logger. `concurrency` 0 means
 * cfg->concurrency. `name` (may be NULL: "kiln") names the consumer and
 * its connections in the broker's management view. Connects nothing yet.
 * Returns: caller owns; free with kiln_pool_free. NULL with `err` on
 * failure. */
KILN_API kiln_pool *kiln_pool_new(const kiln_config *cfg, unsigned concurrency,
                                  const char *name, kiln_error *err);

/* kiln_pool_free waits for any task still running (after a timed-out
 * drain or a second signal), then closes every connection and frees
 * everything: such a task may still send tasks until it returns, and a
 * task that never returns keeps kiln_pool_free waiting (see
 * kiln_pool_start for ending the process anyway). Call it after
 * kiln_pool_start returned, or for a pool never started, from a thread
 * that is not one of its tasks. NULL is a no-op. */
KILN_API void kiln_pool_free(kiln_pool *pool);

/* kiln_pool_register adds a task function, as kiln_registry_add (same
 * ownership of `user`). Before kiln_pool_start only: KILN_ECLOSED after. */
KILN_API kiln_err kiln_pool_register(kiln_pool *pool, const char *name,
                                     kiln_task_fn fn, void *user,
                                     void (*user_free)(void *),
                                     kiln_error *err);

/* kiln_pool_set_time_limit: kiln_registry_set_time_limit on the pool's
 * registry. Before kiln_pool_start. */
KILN_API kiln_err kiln_pool_set_time_limit(kiln_pool *pool, const char *name,
                                           unsigned time_limit_ms,
                                           kiln_error *err);

/* kiln_pool_register_table adds `n` rows, all or none. */
KILN_API kiln_err kiln_pool_register_table(kiln_pool *pool,
                                           const kiln_task_def *defs, size_t n,
                                           kiln_error *err);

/* kiln_pool_start connects, declares the topology, consumes the configured
 * queue and runs tasks until kiln_pool_stop is called or the process gets
 * SIGINT or SIGTERM. With cfg->handle_signals (the default) it installs
 * handlers for these two for the duration of the call (one pool at a time)
 * and, on return, puts back the ones it found unless the program replaced
 * kiln's meanwhile; with it off, kiln touches no signal disposition and the
 * program stops the pool with kiln_pool_stop.
 *
 * A broker that cannot be reached, at start as later, is tried again with
 * capped, jittered backoff (100 ms doubling to 10 s) and a WARN line
 * saying why at each attempt; start does not return for it, so a worker
 * may start before its broker (kiln_pool_wait_ready says when it
 * consumes). A stop or signal while it connects ends the call with
 * KILN_OK once the attempt under way ends (at most
 * cfg->connect_timeout_ms).
 *
 * Stopping drains: no new deliveries are taken, deliveries not yet
 * started go back to the queue, running tasks finish and are acked, the
 * connection is closed. Returns KILN_OK after a complete drain;
 * KILN_ETIMEDOUT when cfg->drain_timeout_ms passed or a second signal came
 * first (unacked deliveries then return to the queue when the connection
 * closes, and kiln_pool_free waits for the tasks still running);
 * KILN_EINVAL when nothing is registered; KILN_ECLOSED when called twice.
 * Blocks the calling thread.
 *
 * After KILN_ETIMEDOUT, a program that must not wait for tasks that may
 * never return may end the process without kiln_pool_free, with _exit()
 * (not exit(), whose clean-up would run under the task threads). Nothing
 * acknowledged is lost: the consuming connection is closed before this
 * returns, so the deliveries of those tasks are back in the queue and run
 * again elsewhere. Lost are those tasks' work in progress and any send
 * they had not had confirmed. */
KILN_API kiln_err kiln_pool_start(kiln_pool *pool, kiln_error *err);

/* kiln_pool_stop asks a running kiln_pool_start to drain and return. Safe
 * from any thread, from a task and from a signal handler (it only touches
 * lock-free atomics and an eventfd); returns at once. Calling it again
 * stops at once, as a second signal does. */
KILN_API void kiln_pool_stop(kiln_pool *pool);

/* kiln_pool_wait_ready waits until the pool's consumer is subscribed to
 * its queue: kiln_pool_start, running on another thread, has connected,
 * declared the topology and is consuming, so tasks in the queue now reach
 * this pool. That is also when the pool logs the NOTICE line
 * "pool=NAME consuming queue=QUEUE". Returns KILN_OK at once when it is
 * consuming (after a lost connection: once it consumes again);
 * KILN_ETIMEDOUT when `timeout_ms` (0: look once) passed first, with the
 * last connection error in `err` ("pool billing is not consuming queue
 * orders after 5000 ms: ..."); KILN_ECLOSED once the pool is stopping or
 * stopped (kiln_pool_stop, a signal, or kiln_pool_start returned);
 * KILN_EINVAL for a NULL pool. It may be called before kiln_pool_start.
 * Thread-safety: safe from any thread, several at once, but not from a
 * signal handler, and not once kiln_pool_free may run. */
KILN_API kiln_err kiln_pool_wait_ready(kiln_pool *pool, unsigned timeout_ms,
                                       kiln_error *err);

/* kiln_pool_send_task publishes `sig` (borrowed; not modified) to the
 * configured exchange, persistent and mandatory, in cfg->dialect, and
 * returns once the broker has confirmed it: KILN_OK means the broker has
 * taken the task. A signature without a CreatedAt is sent with the time
 * of sending where TaskTimeOut may need it (kiln_signature_set_created_at
 * says when). The routing key is the signature's, or cfg->binding_key
 * when it has none. An unroutable task, a nack or no confirm within
 * cfg->publish_timeout_ms is an error, never a silent loss:
 * KILN_ETIMEDOUT when the task was written and not confirmed in time (the
 * broker may have it: it may run, and sending it again may duplicate it);
 * KILN_EBROKER when the broker certainly does not have it (nacked,
 * returned unroutable, or "not sent" because no connection opened within
 * cfg->publish_timeout_ms, the connect error in `err`; a connection
 * attempt under way may add up to cfg->connect_timeout_ms). Concurrent
 * calls share publisher confirms (one round trip for many tasks).
 *
 * Publishing connections are opened on first use, and each declares the
 * topology of cfg as a worker does (exchange, task queue and binding,
 * dead-letter and delay queues): a producer started before any worker
 * routes its tasks into the queue cfg names. One dialect per pool: to
 * send in two, use two pools.
 *
 * With a store, PENDING is recorded before publishing. When the send then
 * fails for certain (any code but KILN_ETIMEDOUT and KILN_ECLOSED), the
 * task is recorded FAILURE "not sent: REASON" instead, so a waiter learns
 * that it will not run; sending the same signature again replaces that
 * FAILURE with PENDING. */
KILN_API kiln_err kiln_pool_send_task(kiln_pool *pool,
                                      const kiln_signature *sig,
                                      kiln_error *err);

/* kiln_pool_send_tasks publishes `n` signatures and waits once for all of
 * their confirms. status[i] (status may be NULL) gets each one's result,
 * with the meanings of kiln_pool_send_task (the store, too, is written as
 * there, task by task); returns KILN_OK when all were confirmed, else the
 * first failure with its index in `err`. */
KILN_API kiln_err kiln_pool_send_tasks(kiln_pool *pool,
                                       const kiln_signature *const *sigs,
                                       size_t n, kiln_err *status,
                                       kiln_error *err);

#ifdef __cplusplus
}
#endif

#endif /* KILN_H */
