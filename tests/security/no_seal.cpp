// Test launcher: runs a program on what looks like a kernel before Linux 5.1, where
// F_SEAL_FUTURE_WRITE does not exist: a seccomp filter makes fcntl(F_ADD_SEALS) fail with EINVAL
// whenever the seals asked for include it (the other seals still work), per process.
//   no_seal <program> [args...]
#include <errno.h>
#include <fcntl.h>
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
    fprintf(stderr, "usage: no_seal <program> [args...]\n");
    return 2;
  }
  // The low 32 bits of argument i (x86-64 is little-endian).
  auto arg = [](int i) { return static_cast<unsigned>(offsetof(seccomp_data, args) + 8 * i); };
  sock_filter filter[] = {
      // Anything but x86-64 native calls is let through unfiltered (a test aid, not a sandbox).
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 7),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fcntl, 0, 5),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg(1)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, F_ADD_SEALS, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg(2)),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, F_SEAL_FUTURE_WRITE, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EINVAL & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog = {static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    fprintf(stderr, "no_seal: cannot install the seccomp filter: %s\n", strerror(errno));
    return 77;  // the test cannot simulate the old kernel here: skip
  }
  execv(argv[1], argv + 1);
  fprintf(stderr, "no_seal: cannot run %s: %s\n", argv[1], strerror(errno));
  return 127;
}
