// Fault test: io_uring unavailable. Under a seccomp filter that refuses io_uring's system calls
// (tests/fault/no_uring.cpp, per process, as a kernel without io_uring or with
// kernel.io_uring_disabled=2 would), `--io auto` falls back to epoll and serves every protocol,
// and `--io uring` refuses to start with a clear error. (The sysctl is global to the machine, so
// the tests do not touch it.) Skipped (77) where seccomp filters cannot be installed.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "daemon/binary_protocol.h"
#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

using namespace tokend::test;

namespace {

struct Launcher {
  Launcher() {
    const std::string noUring = programPath("NO_URING");
    // Can this machine install the filter at all?
    RunResult probe = run({noUring, "/bin/true"});
    if (probe.status == 77) {
      std::fprintf(stderr, "SKIP: %s", probe.err.c_str());
      std::exit(77);
    }
    ::setenv("TOKEND_TEST_LAUNCHER", noUring.c_str(), 1);
  }
  ~Launcher() { ::unsetenv("TOKEND_TEST_LAUNCHER"); }
};

}  // namespace

TEST_SUITE("Fallback") {
  TEST_CASE("with io_uring refused, --io auto falls back to epoll and serves every protocol") {
    Launcher launcher;
    Daemon d({"--io", "auto", "--threads", "2"});
    d.ctlOk({"users", "create", "u"});
    const std::string t = d.ctlOk({"tokens", "create", "--user", "u"});
    CHECK(d.text("VERIFY " + t).rfind("OK ", 0) == 0);
    CHECK(d.text("PING") == "PONG");
    HttpReply h = httpRequest(d.socket(), "GET", "/v1/verify", t);
    CHECK(h.status == 200);
    CHECK(h.headers["x-tokend-reason"] == "ok");
    // Binary: many pipelined frames in one write.
    tokend::UniqueFd fd = connectUnix(d.socket());
    std::string batch;
    for (uint64_t i = 0; i < 50; ++i)
      REQUIRE(tokend::daemon::encodeVerify(batch, i, {t, "", "", ""}));
    sendAll(fd.get(), batch);
    std::string in;
    size_t frames = 0;
    for (int tries = 0; tries < 100 && frames < 50; ++tries) {
      in += readBytes(fd.get(), 1, 100);
      while (true) {
        auto p = tokend::daemon::parseFrame(in);
        if (p.status != tokend::daemon::ParseStatus::Complete) break;
        auto r = tokend::daemon::decodeVerifyResult(p.frame.payload);
        REQUIRE(r);
        CHECK(r->answer.reason == tokend::verifier::Reason::Ok);
        in.erase(0, p.consumed);
        ++frames;
      }
    }
    CHECK(frames == 50);
    CHECK(d.stop() == 0);
    CHECK(d.log().find("io_uring unavailable, falling back to epoll") != std::string::npos);
    CHECK(d.log().find("(epoll backend") != std::string::npos);
  }

  TEST_CASE("with io_uring refused, --io uring does not start and says why") {
    Launcher launcher;
    TempDir dir;
    RunResult r = run({programPath("NO_URING"), programPath("TOKEND"), "--data-dir", dir / "data",
                       "--io", "uring"});
    CHECK(r.status != 0);
    CHECK(r.status < 128);  // an orderly exit, not a crash
    CHECK(r.err.find("io_uring") != std::string::npos);
  }
}
