/* c_example: a plain C program that verifies tokens with libtokend, using only <tokend/client.h>
   and pkg-config (tests/client/c_example.sh builds and runs it; docs/client.md quotes it). */
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <tokend/client.h>

static void print_result(const tokend_result* r) {
  if (r->allowed) {
    printf("OK %s %s %s %s %lld%s\n", r->user_id, r->username, r->token_id, r->login_type,
           (long long)r->expires_at, r->via_shm ? " (shm)" : "");
  } else {
    printf("DENY %s %d%s\n", r->reason, r->http_status, r->via_shm ? " (shm)" : "");
  }
}

int main(int argc, char** argv) {
  tokend_client* c = NULL;
  tokend_result r;
  tokend_request batch[3];
  tokend_result results[3];
  int rc, i;

  if (argc != 3) {
    fprintf(stderr, "usage: %s SOCKET TOKEN\n", argv[0]);
    return 2;
  }
  /* A gateway may start before the daemon listens: retry for a while. */
  for (i = 0; i < 500; ++i) {
    struct timespec ten_ms = {0, 10 * 1000 * 1000};
    rc = tokend_open(argv[1], &c);
    if (rc != -ENOENT && rc != -ECONNREFUSED) break;
    nanosleep(&ten_ms, NULL);
  }
  if (rc < 0) {
    fprintf(stderr, "Failed to open tokend at %s: %s\n", argv[1], strerror(-rc));
    return 1;
  }
  printf("libtokend %s, daemon %s, fast path %s\n", tokend_version(), tokend_daemon_version(c),
         tokend_shm_state(c) == TOKEND_SHM_MAPPED ? "on" : "off");

  /* The first use fills the daemon's cache; the second is decided in shared memory. */
  for (i = 0; i < 2; ++i) {
    rc = tokend_verify(c, argv[2], "workspace:read", NULL, NULL, &r);
    if (rc < 0) {
      fprintf(stderr, "Failed to verify: %s (%s)\n", strerror(-rc), tokend_last_error(c));
      tokend_close(c);
      return 1;
    }
    print_result(&r);
  }

  batch[0].token = argv[2];
  batch[0].permission = "template:read";
  batch[0].object = NULL;
  batch[0].owner = NULL;
  batch[1] = batch[0];
  batch[1].token = "not-a-token";
  batch[2] = batch[0];
  batch[2].permission = "no:such";
  rc = tokend_verify_batch(c, batch, 3, results);
  if (rc < 0) {
    fprintf(stderr, "Failed to verify a batch: %s (%s)\n", strerror(-rc), tokend_last_error(c));
    tokend_close(c);
    return 1;
  }
  for (i = 0; i < 3; ++i) print_result(&results[i]);
  tokend_close(c);
  return 0;
}
