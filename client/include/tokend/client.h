/* libtokend: the C client of tokend, token verification for co-located processes. */
/*
 * This header is the manual. Every function says what it returns, which errors, the lifetime of
 * what it hands out and its thread rules; docs/client.md shows whole programs in C and C++.
 *
 * How a verification is answered
 * ------------------------------
 * tokend publishes its cache of compiled tokens in a shared-memory segment. A process whose
 * credentials the daemon allows (its uid is the daemon's, or is listed in --shm-allow-uid, or its
 * gid in --shm-allow-gid) receives the segment's descriptor over the socket and maps it
 * read-only. tokend_verify() then decides a cached token in this process, without a system call
 * (the "fast path": SHA-256 of the secret, a lock-free read of one cache slot, the same decision
 * code as the daemon's). Everything the slot cannot decide (a token not cached, an expired-looking
 * entry, an allow list too long to cache, a slot being rewritten, a daemon that restarted) is
 * asked of the daemon over the Unix socket. The answer is the same either way; `via_shm` says
 * which path gave it. A process the daemon does not allow gets the same answers, all through the
 * socket.
 *
 * Nothing is cached in this process: a token revoked, deleted or expired, or a user suspended,
 * is refused by the next call that starts after the daemon has invalidated its slot (within
 * 10 ms of the change being committed, whoever committed it).
 *
 * Uses decided in shared memory still count for the token's last_used and for the sliding
 * refresh of sessions: the library queues them (without blocking the verification) and a
 * background thread reports them to the daemon in batches, at most once a minute per token.
 *
 * Errors and verdicts
 * -------------------
 * Functions returning int return 0 on success or a negative errno value. A denial (unknown,
 * expired, wrong scope...) is NOT an error: tokend_verify() returns 0 and sets allowed = 0. An
 * error means no answer could be had (the daemon is not running, the socket is unreachable, a
 * timeout); treat it as "unable to verify" (typically HTTP 503), never as allowed.
 *
 * Threads
 * -------
 * A tokend_client handle must be used by one thread at a time: calls on one handle must not
 * overlap (a mutex around the handle, or one handle per thread, which is what a multi-threaded
 * gateway should do: handles share nothing, and the fast path scales with them). Different
 * handles may be used concurrently from different threads. While the fast path is in use a handle
 * owns one background thread (started on demand, joined by tokend_close()); it never calls back
 * into your code. A handle must not be used in a child after fork(): open a new one there.
 *
 * The library never logs, and never writes a token or a secret anywhere: the bytes of the token
 * leave this process only over the socket to the daemon.
 */
#ifndef TOKEND_CLIENT_H
#define TOKEND_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TOKEND_API __attribute__((visibility("default")))
#else
#define TOKEND_API
#endif

/* The version of this header. tokend_version() gives the library's, which may be newer. */
#define TOKEND_VERSION_MAJOR 0
#define TOKEND_VERSION_MINOR 1
#define TOKEND_VERSION_PATCH 0
#define TOKEND_VERSION_STRING "0.1.0"

/* An open connection to one tokend, with its mapping of the shared-memory cache. Opaque. */
typedef struct tokend_client tokend_client;

/*
 * One verdict. All strings are NUL-terminated. The identity fields (user_id, username, token_id,
 * login_type, expires_at) are filled only when allowed is 1; otherwise they are empty and 0.
 */
typedef struct tokend_result {
  int allowed;        /* 1: the token is valid and, if a permission was asked, grants it */
  int http_status;    /* 200, 401 (authentication), 403 (authorisation), 400 (bad request) or
                         503 (unavailable) */
  const char* reason; /* "ok", "missing", "malformed", "unknown", "bad_secret", "expired",
                         "user_inactive", "scope", "allow_list", "role", "bad_request",
                         "unavailable" (a PostgreSQL replica past --max-staleness); static
                         storage: valid for the life of the process, never freed */
  char user_id[37];   /* the user's UUID, canonical lowercase 8-4-4-4-12 form */
  char username[33];
  char token_id[11];   /* the token's 10-character id (the part before the hyphen), not secret */
  char login_type[16]; /* "token", "password", "oidc" or "github" */
  int64_t expires_at;  /* Unix seconds */
  int via_shm;         /* 1: decided in this process (shared memory, or a malformed/missing token
                          that needs no lookup); 0: answered by the daemon over the socket */
  int owned;           /* 1 (allowed only): the permission was granted because `owner` named the
                          token's user, an "owned" role permission (SPEC 6). tokend cannot know who
                          owns an object: this grant holds only if YOUR data says the object
                          belongs to that user. Never pass an owner taken from the client's
                          request; check it, or refuse. 0: granted site-wide (or no permission
                          was asked). Same on both paths. From a daemon older than this library
                          (no grant flags), 1 whenever allowed with a permission and an owner. */
} tokend_result;

/* One request of a batch (tokend_verify_batch). NULL or "" means absent, as for tokend_verify. */
typedef struct tokend_request {
  const char* token;
  const char* permission;
  const char* object;
  const char* owner;
} tokend_request;

/* Flags of tokend_open_ex(). */
#define TOKEND_OPEN_NO_SHM 0x1u /* never map the segment: every answer comes over the socket */

/* What tokend_shm_state() reports. */
#define TOKEND_SHM_OFF 0     /* turned off by the caller (TOKEND_OPEN_NO_SHM, set_fast_path) */
#define TOKEND_SHM_MAPPED 1  /* mapped and current: cached tokens are decided in-process */
#define TOKEND_SHM_REFUSED 2 /* the daemon refused this process's uid/gid (see last_error) */
#define TOKEND_SHM_UNAVAILABLE                                     \
  3 /* not mapped now: no segment offered, a segment that does not \
       match this library, or the daemon went away (the next call  \
       that reaches a daemon maps the new segment) */

/* The most requests tokend_verify_batch() takes in one call. */
#define TOKEND_BATCH_MAX 4096

/*
 * Opens a client of the tokend listening on `socket_path` (the daemon's --socket, by default
 * <data-dir>/tokend.sock). NULL means the environment variable TOKEND_SOCKET.
 *
 * Connects at once, learns the daemon's version and asks for the shared-memory segment; a
 * refusal of the segment is not an error (tokend_shm_state() says TOKEND_SHM_REFUSED and
 * everything goes through the socket).
 *
 * Returns 0 and sets *out to a new handle, which the caller releases with tokend_close(). On
 * error *out is set to NULL. Errors: -EINVAL (out is NULL, no path given, a path too long for a
 * Unix socket), -ENOMEM, and the errno of connect(2) and of the first exchange: -ENOENT (no
 * socket at that path), -ECONNREFUSED (no daemon listening), -EACCES (the socket's mode does not
 * let this process connect), -ETIMEDOUT, -EPROTO (not a tokend, or a protocol it does not speak).
 * Thread rules: none (any thread, any number at once).
 */
TOKEND_API int tokend_open(const char* socket_path, tokend_client** out);

/* As tokend_open(), with TOKEND_OPEN_* flags. Unknown flag bits give -EINVAL. */
TOKEND_API int tokend_open_ex(const char* socket_path, unsigned flags, tokend_client** out);

/*
 * Verifies `token` and, when `permission` ("resource:action") is given, whether it grants that
 * permission on `object` ("type:uuid") owned by `owner` (a user UUID). `token` NULL or "" gives
 * the verdict "missing"; `permission`, `object` and `owner` may be NULL or "" (absent). An
 * object of "-" also means absent.
 *
 * Returns 0 with the verdict in *out, allowed or not. Errors (*out is then unspecified):
 * -EINVAL (c or out NULL); -ECONNREFUSED, -ENOENT, -ECONNRESET, -EPIPE (the daemon is gone and
 * a reconnect failed); -ETIMEDOUT (no answer within the timeout, see tokend_set_timeout); -EIO
 * (the daemon failed to read its database; may be retried); -EPROTO (an answer that is not
 * tokend's protocol); -ENOMEM.
 *
 * A broken connection (the daemon restarted, or closed an idle connection) is re-opened once,
 * transparently, and the request sent again; the new daemon's segment is mapped on the way.
 * Never blocks on the fast path; on the socket path waits at most about twice the timeout.
 * Thread rules: one thread at a time per handle.
 */
TOKEND_API int tokend_verify(tokend_client* c, const char* token, const char* permission,
                             const char* object, const char* owner, tokend_result* out);

/*
 * Verifies `count` requests (at most TOKEND_BATCH_MAX) into results[0..count-1], in order.
 * Those the fast path decides are answered in-process; the others are pipelined over the socket
 * (many requests per write, no round trip each), which is much faster than calling
 * tokend_verify() in a loop when the daemon must answer.
 *
 * Returns 0 when every result is filled. Errors as tokend_verify(), plus -EINVAL for count over
 * TOKEND_BATCH_MAX or a NULL requests/results with count > 0; on error the results are
 * unspecified (some may be filled). count 0 returns 0. Thread rules: as tokend_verify().
 */
TOKEND_API int tokend_verify_batch(tokend_client* c, const tokend_request* requests, size_t count,
                                   tokend_result* results);

/*
 * Turns the shared-memory fast path on (enabled != 0) or off (0) for this handle. Off, every
 * verification goes to the daemon (answers are identical; this is for comparing, debugging or
 * measuring). Turning it on maps the segment on the next call that reaches the daemon, if the
 * daemon allows it; a handle opened with TOKEND_OPEN_NO_SHM can be turned on this way too.
 * Returns 0, or -EINVAL for a NULL c. Thread rules: one thread at a time per handle.
 */
TOKEND_API int tokend_set_fast_path(tokend_client* c, int enabled);

/* One of TOKEND_SHM_*; TOKEND_SHM_OFF for a NULL c. Thread rules: as tokend_verify(). */
TOKEND_API int tokend_shm_state(const tokend_client* c);

/*
 * Sets how long one socket operation (connect, send, or waiting for an answer) may take before
 * the call gives -ETIMEDOUT. Default 5000 ms. milliseconds must be > 0.
 * Returns 0, or -EINVAL. Applies from the next socket operation. Thread rules: as tokend_verify().
 */
TOKEND_API int tokend_set_timeout(tokend_client* c, int milliseconds);

/*
 * Hands the uses queued by the fast path to the background thread and waits until they have
 * been reported to the daemon, for at most timeout_ms (reports are otherwise sent about once a
 * second; tokend_close() flushes too). Returns 0 (also when there is nothing to report or no
 * fast path), -ETIMEDOUT, -EINVAL. Thread rules: as tokend_verify().
 */
TOKEND_API int tokend_flush(tokend_client* c, int timeout_ms);

/*
 * The software version the daemon announced (e.g. "tokend/0.1.0"), or "" if it announced none.
 * Valid until the next call on `c` that reconnects (any verification may) or tokend_close().
 * Never NULL for a non-NULL c. Thread rules: as tokend_verify().
 */
TOKEND_API const char* tokend_daemon_version(const tokend_client* c);

/* This library's version, "MAJOR.MINOR.PATCH". Static storage. Any thread. */
TOKEND_API const char* tokend_version(void);

/*
 * A message for a human about the last failure on `c`: the last error a call returned, or why
 * the daemon refused the segment. "" when there is none. Never contains a token. Valid until the
 * next call on `c`. Thread rules: as tokend_verify(). Log it once, the library does not log.
 */
TOKEND_API const char* tokend_last_error(const tokend_client* c);

/*
 * Reports the uses still queued (waiting at most about one second for the daemon), stops the
 * background thread, closes the connections and unmaps the segment. NULL is ignored. The handle
 * and every string it handed out are invalid afterwards; a tokend_result the caller owns stays
 * valid. Thread rules: no other call on `c` may run at the same time or after.
 */
TOKEND_API void tokend_close(tokend_client* c);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TOKEND_CLIENT_H */
