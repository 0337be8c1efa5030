// Tests for the event loop, each run against both backends with a line-echo Session.
#include "daemon/loop.h"

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "tests/support/alloc_counter.h"
#include "tests/support/process.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.h"

using namespace std::chrono_literals;
using tokend::UniqueFd;
using tokend::daemon::After;
using tokend::daemon::Backend;
using tokend::daemon::Listener;
using tokend::daemon::ListenerKind;
using tokend::daemon::LoopConfig;
using tokend::daemon::Output;
using tokend::daemon::PeerCred;
using tokend::daemon::Server;
using tokend::daemon::Session;
using tokend::daemon::SessionFactory;
using tokend::test::waitFor;

namespace {

constexpr size_t kBig = size_t{4} << 20;

struct EchoFactory;

// Answers each "\n"-terminated line with "ECHO <line>\n", except for a few commands:
//   BIG   "BIG " + 4 MiB + "\n"         QB    255 'q' + "\n"
//   FD    "FD\n" carrying passFd        CRED  "CRED <pid> <uid> <gid>\n"
//   SLOW  "SLOW\n" after 300 ms         QUIT  "BYE\n", then close
//   KIND  "KIND <listener kind> <uid>\n"
class EchoSession final : public Session {
 public:
  EchoSession(EchoFactory& factory, PeerCred peer) : factory_(factory), peer_(peer) {}
  After onInput(std::string_view in, size_t& consumed, Output& out) override;

 private:
  EchoFactory& factory_;
  PeerCred peer_;
};

struct EchoFactory final : SessionFactory {
  std::unique_ptr<Session> open(int, const PeerCred& peer, tokend::daemon::Resume) override {
    return std::make_unique<EchoSession>(*this, peer);
  }
  int passFd = -1;
  std::atomic<bool> slowEntered{false};
};

After EchoSession::onInput(std::string_view in, size_t& consumed, Output& out) {
  size_t pos = 0;
  for (size_t nl; (nl = in.find('\n', pos)) != std::string_view::npos;) {
    const std::string_view line = in.substr(pos, nl - pos);
    pos = nl + 1;
    if (line == "BIG") {
      out.bytes += "BIG ";
      out.bytes.append(kBig, 'x');
      out.bytes += '\n';
    } else if (line == "QB") {
      out.bytes.append(255, 'q');
      out.bytes += '\n';
    } else if (line == "FD") {
      out.bytes += "FD\n";
      out.passFd = factory_.passFd;
      break;  // one descriptor per call: the loop calls again for the rest
    } else if (line == "KIND") {
      const std::string uid =
          peer_.uid == static_cast<uid_t>(-1) ? std::string("-1") : std::to_string(peer_.uid);
      out.bytes += "KIND " + std::to_string(static_cast<int>(peer_.listener)) + " " + uid + "\n";
    } else if (line == "CRED") {
      out.bytes += "CRED " + std::to_string(peer_.pid) + " " + std::to_string(peer_.uid) + " " +
                   std::to_string(peer_.gid) + "\n";
    } else if (line == "SLOW") {
      factory_.slowEntered = true;
      std::this_thread::sleep_for(300ms);
      out.bytes += "SLOW\n";
    } else if (line == "QUIT") {
      out.bytes += "BYE\n";
      consumed = pos;
      return After::Close;
    } else {
      out.bytes += "ECHO ";
      out.bytes.append(line);
      out.bytes += '\n';
    }
  }
  consumed = pos;
  return After::Continue;
}

const char* nameOf(Backend b) {
  return b == Backend::Uring ? "io_uring" : "epoll";
}

// A listening socket in a temporary directory and a Server running on its own thread.
class LoopFixture {
 public:
  LoopFixture() {
    char tmpl[] = "/tmp/tokend-loop-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/tokend.sock";
  }
  ~LoopFixture() {
    stop();
    std::filesystem::remove_all(dir_);
  }

  // Returns false (after saying why) when the backend is unavailable here.
  bool start(Backend backend, LoopConfig config = {}) {
    listen_.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    REQUIRE(listen_.valid());
    sockaddr_un addr = address();
    REQUIRE(bind(listen_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(listen_.get(), 512) == 0);
    config.backend = backend;
    auto server = Server::create(listen_.get(), config, factory);
    if (!server && backend == Backend::Uring) {
      MESSAGE("io_uring unavailable, skipping its half: " << server.error().message);
      return false;
    }
    REQUIRE_MESSAGE(server.has_value(), server.error().message);
    server_ = std::move(*server);
    if (backend != Backend::Auto) CHECK(server_->backendName() == nameOf(backend));
    thread_ = std::thread([this] {
      server_->run();
      returned_ = true;
    });
    return true;
  }

  // Stops the server and waits for run() to return; false if it took longer than `limit`.
  bool stop(std::chrono::milliseconds limit = 5s) {
    if (!thread_.joinable()) return true;
    server_->stop();
    const bool inTime = waitFor([&] { return returned_.load(); }, limit);
    thread_.join();
    return inTime;
  }

  UniqueFd connect() const {
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd.valid());
    sockaddr_un addr = address();
    REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    // A test that goes wrong fails instead of hanging.
    timeval tv{10, 0};
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
  }

  Server& server() { return *server_; }
  EchoFactory factory;

 private:
  sockaddr_un address() const {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    return addr;
  }

  std::string dir_;
  std::string path_;
  UniqueFd listen_;
  std::unique_ptr<Server> server_;
  std::thread thread_;
  std::atomic<bool> returned_{false};
};

// Runs `body` once per backend; the io_uring half skips itself when io_uring is unavailable.
void forEachBackend(const std::function<void(Backend)>& body) {
  for (Backend b : {Backend::Uring, Backend::Epoll}) {
    INFO("backend: " << std::string(nameOf(b)));
    body(b);
  }
}

void writeAll(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    REQUIRE(n > 0);
    s.remove_prefix(static_cast<size_t>(n));
  }
}

// Reads until `n` bytes arrived, EOF, an error or the receive timeout.
std::string readN(int fd, size_t n) {
  std::string s;
  std::vector<char> buf(64 * 1024);
  while (s.size() < n) {
    const ssize_t r = recv(fd, buf.data(), std::min(buf.size(), n - s.size()), 0);
    if (r <= 0) break;
    s.append(buf.data(), static_cast<size_t>(r));
  }
  return s;
}

std::string readLine(int fd) {
  std::string s;
  char c;
  while (recv(fd, &c, 1, 0) == 1) {
    s += c;
    if (c == '\n') break;
  }
  return s;
}

// Whether the server closed the connection (EOF or reset) before the receive timeout.
bool closedByServer(int fd) {
  char buf[4096];
  for (;;) {
    const ssize_t r = recv(fd, buf, sizeof(buf), 0);
    if (r == 0) return true;
    if (r < 0) return errno == ECONNRESET || errno == EPIPE;
  }
}

std::string echo(std::string_view line) {
  return "ECHO " + std::string(line) + "\n";
}

void roundtrip(int fd, std::string_view line) {
  writeAll(fd, std::string(line) + "\n");
  CHECK(readN(fd, echo(line).size()) == echo(line));
}

}  // namespace

TEST_SUITE("Loop") {
  TEST_CASE("answers a single request") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      if (!f.start(b)) return;
      UniqueFd c = f.connect();
      roundtrip(c.get(), "hello");
      CHECK(f.stop());
      CHECK(f.server().stats().accepted == 1);
      CHECK(f.server().stats().closed == 1);
      CHECK(f.server().stats().open == 0);
      CHECK(f.server().stats().bytesIn == 6);
      CHECK(f.server().stats().bytesOut == 11);
    });
  }

  TEST_CASE("answers 1000 pipelined requests sent in one write, in order") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      if (!f.start(b)) return;
      std::string requests, answers;
      for (int i = 0; i < 1000; ++i) {
        requests += "request-" + std::to_string(i) + "\n";
        answers += echo("request-" + std::to_string(i));
      }
      UniqueFd c = f.connect();
      writeAll(c.get(), requests);
      CHECK(readN(c.get(), answers.size()) == answers);
    });
  }

  TEST_CASE("delivers an answer larger than the socket buffer, then the next one") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      if (!f.start(b)) return;
      UniqueFd c = f.connect();
      writeAll(c.get(), "BIG\nafter\n");
      const std::string expected = "BIG " + std::string(kBig, 'x') + "\n" + echo("after");
      const std::string got = readN(c.get(), expected.size());
      CHECK(got.size() == expected.size());
      CHECK(got == expected);
    });
  }

  TEST_CASE("holds reading back while the client does not read, and resumes when it does") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      LoopConfig config;
      config.maxPendingOutput = 16 * 1024;
      if (!f.start(b, config)) return;
      UniqueFd c = f.connect();
      // More input than one read takes, answered by far more output than the limit.
      constexpr int kRequests = 60000;
      std::thread writer([&] {
        std::string requests;
        for (int i = 0; i < kRequests; ++i) requests += "QB\n";
        writeAll(c.get(), requests);
      });
      std::this_thread::sleep_for(200ms);
      std::string answer(255, 'q');
      answer += '\n';
      const std::string got = readN(c.get(), answer.size() * kRequests);
      writer.join();
      REQUIRE(got.size() == answer.size() * kRequests);
      size_t wrong = 0;
      for (size_t i = 0; i < got.size(); i += answer.size())
        wrong += got.compare(i, answer.size(), answer) != 0;
      CHECK(wrong == 0);
      roundtrip(c.get(), "still-there");
    });
  }

  TEST_CASE("refuses connections beyond maxConnections") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      LoopConfig config;
      config.maxConnections = 2;
      if (!f.start(b, config)) return;
      UniqueFd c1 = f.connect();
      roundtrip(c1.get(), "one");
      UniqueFd c2 = f.connect();
      roundtrip(c2.get(), "two");
      UniqueFd c3 = f.connect();
      CHECK(closedByServer(c3.get()));
      CHECK(f.server().stats().refused == 1);
      roundtrip(c1.get(), "one-again");
      // A place freed is a place taken again.
      c1.reset();
      CHECK(waitFor([&] { return f.server().stats().open == 1; }));
      UniqueFd c4 = f.connect();
      roundtrip(c4.get(), "four");
      CHECK(f.server().stats().accepted == 3);
    });
  }

  TEST_CASE("a client connecting right after others closed is served, not refused") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      LoopConfig config;
      config.maxConnections = 4;
      if (!f.start(b, config)) return;
      // The places are taken by connections whose peers have just closed: the worker may see
      // the newcomer before it reaps them, and must not count them against it.
      int refused = 0;
      for (int round = 0; round < 50; ++round) {
        std::vector<UniqueFd> full;
        for (int i = 0; i < 4; ++i) {
          full.push_back(f.connect());
          roundtrip(full.back().get(), "fill");
        }
        full.clear();
        UniqueFd next = f.connect();
        writeAll(next.get(), "next\n");
        if (readN(next.get(), echo("next").size()) != echo("next")) ++refused;
      }
      CHECK(refused == 0);
    });
  }

  TEST_CASE("closes a connection stalled mid-request after stallTimeoutMs") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      LoopConfig config;
      config.stallTimeoutMs = 300;
      if (!f.start(b, config)) return;
      UniqueFd quiet = f.connect();
      roundtrip(quiet.get(), "quiet");
      UniqueFd c = f.connect();
      const auto start = std::chrono::steady_clock::now();
      writeAll(c.get(), "ECHO a partial request");
      CHECK(closedByServer(c.get()));
      CHECK(std::chrono::steady_clock::now() - start >= 250ms);
      CHECK(f.server().stats().timedOut == 1);
      // A connection with nothing pending is idle, not stalled.
      roundtrip(quiet.get(), "still-open");
    });
  }

  TEST_CASE("closes an idle connection after idleTimeoutMs") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      LoopConfig config;
      config.idleTimeoutMs = 300;
      if (!f.start(b, config)) return;
      UniqueFd c = f.connect();
      roundtrip(c.get(), "then-nothing");
      CHECK(closedByServer(c.get()));
      CHECK(f.server().stats().timedOut == 1);
    });
  }

  TEST_CASE("closes a connection whose request grows past maxPendingInput") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      LoopConfig config;
      config.maxPendingInput = 4096;
      if (!f.start(b, config)) return;
      UniqueFd other = f.connect();
      UniqueFd c = f.connect();
      const std::string chunk(1024, 'x');
      bool refused = false;
      for (size_t sent = 0; sent < (size_t{64} << 20);) {
        const ssize_t n = send(c.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
        if (n < 0) {
          refused = errno == EPIPE || errno == ECONNRESET;
          break;
        }
        sent += static_cast<size_t>(n);
      }
      CHECK(refused);
      CHECK(closedByServer(c.get()));
      roundtrip(other.get(), "unaffected");
    });
  }

  TEST_CASE("sends the answer, then closes, when the Session asks to close") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      if (!f.start(b)) return;
      UniqueFd c = f.connect();
      writeAll(c.get(), "first\nQUIT\nignored\n");
      CHECK(readN(c.get(), 100) == echo("first") + "BYE\n");
      CHECK(closedByServer(c.get()));
    });
  }

  TEST_CASE("a client disconnecting mid-request does not disturb another") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      if (!f.start(b)) return;
      UniqueFd stays = f.connect();
      roundtrip(stays.get(), "before");
      {
        UniqueFd leaves = f.connect();
        writeAll(leaves.get(), "first\nhalf a req");
        CHECK(readN(leaves.get(), echo("first").size()) == echo("first"));
      }
      CHECK(waitFor([&] { return f.server().stats().closed == 1; }));
      writeAll(stays.get(), "x\ny\n");
      CHECK(readN(stays.get(), 14) == echo("x") + echo("y"));
    });
  }

  TEST_CASE("passes a descriptor with SCM_RIGHTS, with its own answer") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      UniqueFd memfd(memfd_create("loop-test", MFD_CLOEXEC));
      REQUIRE(memfd.valid());
      REQUIRE(write(memfd.get(), "payload", 7) == 7);
      f.factory.passFd = memfd.get();
      if (!f.start(b)) return;
      UniqueFd c = f.connect();
      // Two descriptors in one pipelined write: each must travel, in order.
      writeAll(c.get(), "a\nFD\nb\nFD\n");
      const std::string expected = echo("a") + "FD\n" + echo("b") + "FD\n";
      std::string got;
      std::vector<int> fds;
      while (got.size() < expected.size()) {
        char buf[256];
        iovec iov{buf, sizeof(buf)};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        const ssize_t n = recvmsg(c.get(), &msg, MSG_CMSG_CLOEXEC);
        REQUIRE(n > 0);
        got.append(buf, static_cast<size_t>(n));
        for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
          REQUIRE(cm->cmsg_type == SCM_RIGHTS);
          const size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
            fds.push_back(fd);
          }
        }
      }
      CHECK(got == expected);
      REQUIRE(fds.size() == 2);
      for (int fd : fds) {
        char buf[8] = {};
        CHECK(pread(fd, buf, 7, 0) == 7);
        CHECK(std::string(buf) == "payload");
        close(fd);
      }
    });
  }

  TEST_CASE("gives the Session the peer's credentials") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      if (!f.start(b)) return;
      UniqueFd c = f.connect();
      writeAll(c.get(), "CRED\n");
      CHECK(readLine(c.get()) == "CRED " + std::to_string(getpid()) + " " +
                                     std::to_string(getuid()) + " " + std::to_string(getgid()) +
                                     "\n");
    });
  }

  TEST_CASE("accepts on every listener and tags each connection with its listener's kind") {
    forEachBackend([](Backend b) {
      EchoFactory factory;
      UniqueFd unixFd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      sockaddr_un ua{};
      ua.sun_family = AF_UNIX;  // autobind
      REQUIRE(bind(unixFd.get(), reinterpret_cast<sockaddr*>(&ua), sizeof(sa_family_t)) == 0);
      REQUIRE(listen(unixFd.get(), 8) == 0);
      socklen_t ulen = sizeof ua;
      REQUIRE(getsockname(unixFd.get(), reinterpret_cast<sockaddr*>(&ua), &ulen) == 0);
      std::vector<Listener> listeners{{unixFd.get(), ListenerKind::Unix}};
      std::vector<UniqueFd> tcp;
      std::vector<uint16_t> ports;
      for (int i = 0; i < 2; ++i) {
        tcp.emplace_back(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(bind(tcp.back().get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(listen(tcp.back().get(), 8) == 0);
        socklen_t len = sizeof a;
        REQUIRE(getsockname(tcp.back().get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
        ports.push_back(ntohs(a.sin_port));
        listeners.push_back(
            {tcp.back().get(), i == 0 ? ListenerKind::Http : ListenerKind::Metrics});
      }
      LoopConfig config;
      config.backend = b;
      config.threads = 2;
      auto server = Server::create(listeners, config, factory);
      if (!server) {
        REQUIRE(b == Backend::Uring);
        MESSAGE("io_uring unavailable, skipping its half: " << server.error().message);
        return;
      }
      std::thread runner([&] { (*server)->run(); });
      UniqueFd u(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      REQUIRE(connect(u.get(), reinterpret_cast<sockaddr*>(&ua), ulen) == 0);
      writeAll(u.get(), "KIND\n");
      CHECK(readLine(u.get()) == "KIND 0 " + std::to_string(getuid()) + "\n");
      for (int i = 0; i < 2; ++i) {
        // Several connections each: every worker accepts on every listener.
        for (int k = 0; k < 4; ++k) {
          UniqueFd c(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
          sockaddr_in a{};
          a.sin_family = AF_INET;
          a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
          a.sin_port = htons(ports[i]);
          REQUIRE(connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
          writeAll(c.get(), "KIND\n");
          // A TCP peer has no credentials: uid -1, never the daemon's own.
          CHECK(readLine(c.get()) == "KIND " + std::to_string(i + 1) + " -1\n");
        }
      }
      (*server)->stop();
      runner.join();
      CHECK((*server)->stats().accepted == 9);
    });
  }

  TEST_CASE("stop() answers requests in flight, closes connections and returns") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      if (!f.start(b)) return;
      UniqueFd idle = f.connect();
      roundtrip(idle.get(), "idle");
      UniqueFd busy = f.connect();
      writeAll(busy.get(), "SLOW\nafter\n");
      REQUIRE(waitFor([&] { return f.factory.slowEntered.load(); }));
      const auto start = std::chrono::steady_clock::now();
      CHECK(f.stop());
      CHECK(std::chrono::steady_clock::now() - start < 2500ms);
      CHECK(readN(busy.get(), 100) == "SLOW\n" + echo("after"));
      CHECK(closedByServer(idle.get()));
      CHECK(f.server().stats().open == 0);
    });
  }

  TEST_CASE("stop() before run() makes run() return at once") {
    forEachBackend([](Backend b) {
      EchoFactory factory;
      UniqueFd listenFd(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;  // autobind: an abstract address, nothing to clean up
      REQUIRE(bind(listenFd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(sa_family_t)) == 0);
      REQUIRE(listen(listenFd.get(), 8) == 0);
      LoopConfig config;
      config.backend = b;
      config.threads = 2;
      auto server = Server::create(listenFd.get(), config, factory);
      if (!server) {
        REQUIRE(b == Backend::Uring);
        MESSAGE("io_uring unavailable, skipping its half: " << server.error().message);
        return;
      }
      (*server)->stop();
      (*server)->run();
    });
  }

  TEST_CASE("two workers serve many concurrent clients") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      LoopConfig config;
      config.threads = 2;
      if (!f.start(b, config)) return;
      constexpr int kClients = 32;
      constexpr int kRounds = 50;
      constexpr int kPipelined = 20;
      std::atomic<int> failures{0};
      std::vector<std::thread> clients;
      for (int i = 0; i < kClients; ++i) {
        clients.emplace_back([&, i] {
          UniqueFd c = f.connect();
          for (int r = 0; r < kRounds; ++r) {
            std::string requests, answers;
            for (int k = 0; k < kPipelined; ++k) {
              const std::string line =
                  std::to_string(i) + "-" + std::to_string(r) + "-" + std::to_string(k);
              requests += line + "\n";
              answers += echo(line);
            }
            if (send(c.get(), requests.data(), requests.size(), MSG_NOSIGNAL) !=
                    static_cast<ssize_t>(requests.size()) ||
                readN(c.get(), answers.size()) != answers) {
              ++failures;
              return;
            }
          }
        });
      }
      for (auto& t : clients) t.join();
      CHECK(failures == 0);
      CHECK(f.server().stats().accepted == kClients);
      CHECK(f.stop());
      CHECK(f.server().stats().closed == kClients);
    });
  }

  TEST_CASE("makes no heap allocation per request once warmed up") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      if (!f.start(b)) return;
      UniqueFd c = f.connect();
      std::string requests, answers;
      for (int k = 0; k < 16; ++k) {
        requests += "steady-" + std::to_string(k) + "\n";
        answers += echo("steady-" + std::to_string(k));
      }
      std::vector<char> buf(answers.size());
      // Allocation-free on the client side too: raw send and recv into a ready buffer.
      auto exchange = [&] {
        if (send(c.get(), requests.data(), requests.size(), MSG_NOSIGNAL) !=
            static_cast<ssize_t>(requests.size()))
          return false;
        size_t got = 0;
        while (got < buf.size()) {
          const ssize_t n = recv(c.get(), buf.data() + got, buf.size() - got, 0);
          if (n <= 0) return false;
          got += static_cast<size_t>(n);
        }
        return std::memcmp(buf.data(), answers.data(), buf.size()) == 0;
      };
      bool ok = true;
      for (int i = 0; i < 200; ++i) ok = exchange() && ok;  // buffers reach their size
      const long before = tokend::test::allocations();
      for (int i = 0; i < 2000; ++i) ok = exchange() && ok;
      const long during = tokend::test::allocations() - before;
      CHECK(ok);
      CHECK(during == 0);
    });
  }

  TEST_CASE("keeps serving when more arrives at once than there are receive buffers") {
    forEachBackend([](Backend b) {
      LoopFixture f;
      if (!f.start(b)) return;
      // Connections with a receive armed, then 128 KiB on each while the worker is held up in a
      // Session: with io_uring, that is more data at once than the provided buffers hold, so
      // receives end with ENOBUFS and must be re-armed.
      constexpr int kClients = 64;
      constexpr int kLines = 32;
      const std::string line(4095, 'x');
      std::string requests;
      for (int k = 0; k < kLines; ++k) requests += line + "\n";
      std::vector<UniqueFd> clients;
      for (int i = 0; i < kClients; ++i) {
        clients.push_back(f.connect());
        roundtrip(clients.back().get(), "hello-" + std::to_string(i));
      }
      UniqueFd slow = f.connect();
      writeAll(slow.get(), "SLOW\n");
      REQUIRE(waitFor([&] { return f.factory.slowEntered.load(); }));
      for (const auto& c : clients) writeAll(c.get(), requests);
      CHECK(readN(slow.get(), 5) == "SLOW\n");
      std::string answers;
      for (int k = 0; k < kLines; ++k) answers += echo(line);
      int wrong = 0;
      for (const auto& c : clients) wrong += readN(c.get(), answers.size()) != answers;
      CHECK(wrong == 0);
    });
  }

  TEST_CASE("Backend::Auto picks io_uring where it works, else epoll") {
    LoopFixture f;
    REQUIRE(f.start(Backend::Auto));
    CHECK((f.server().backendName() == "io_uring" || f.server().backendName() == "epoll"));
    UniqueFd c = f.connect();
    roundtrip(c.get(), "auto");
  }

  TEST_CASE("refuses a configuration without workers") {
    EchoFactory factory;
    LoopConfig config;
    config.threads = 0;
    CHECK_FALSE(Server::create(-1, config, factory).has_value());
  }
}
