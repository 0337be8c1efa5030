// Test launcher: runs a program with io_uring refused (a seccomp filter makes io_uring_setup,
// io_uring_enter and io_uring_register fail with ENOSYS, as on a kernel built without io_uring or
// with kernel.io_uring_disabled=2), per process, so other tests on the machine are untouched.
//   no_uring <program> [args...]
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: no_uring <program> [args...]\n");
    return 2;
  }
  sock_filter filter[] = {
      // Anything but x86-64 native calls is let through unfiltered (this is a test aid, not a
      // sandbox).
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 5),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog = {static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    fprintf(stderr, "no_uring: cannot install the seccomp filter: %s\n", strerror(errno));
    return 77;  // the test cannot force io_uring off here: skip
  }
  execv(argv[1], argv + 1);
  fprintf(stderr, "no_uring: cannot run %s: %s\n", argv[1], strerror(errno));
  return 127;
}
