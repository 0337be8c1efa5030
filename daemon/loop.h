// The event loop API: accepts connections on a listening Unix socket and moves bytes between
// sockets and per-connection Sessions. It knows nothing of tokens or protocols (cf. Redis's ae).
//
// Threading: `threads` workers, each with its own io_uring ring (or epoll instance). A connection
// lives on one worker for its whole life; its Session is only ever called from that worker.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace tokend::daemon {

// What a listening socket serves. The loop does not interpret it beyond reading peer credentials
// on Unix sockets only; it tags each connection with its listener's kind for the factory.
enum class ListenerKind : uint8_t {
  Unix,     // the Unix socket: every protocol, peer credentials
  Http,     // --http-listen: TCP, no peer credentials
  Metrics,  // --metrics-listen: TCP, no peer credentials
};

struct Listener {
  int fd = -1;  // listening, non-blocking, CLOEXEC (not owned)
  ListenerKind kind = ListenerKind::Unix;
};

// A TCP peer has no credentials: its uid and gid are (uid_t)-1 and (gid_t)-1, its pid 0.
struct PeerCred {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  ListenerKind listener = ListenerKind::Unix;
  int fd = -1;  // the connection's socket, open while its Session lives (for SO_PEERGROUPS)
};

// What a Session hands back to the loop. The loop sends `bytes` (then clears it) with one send per
// connection per batch; when `passFd` >= 0 it is attached to that send with SCM_RIGHTS (the loop
// does not own or close it: keep it open until the answer is read) and reset to -1. The
// descriptor travels with the first byte appended by the same onInput() call, so that call must
// append at least one byte (else the connection is closed); one descriptor per call.
struct Output {
  std::string bytes;
  int passFd = -1;
};

// Continue: go on. Close: close once `out` has been sent. Wait: the answer to the last consumed
// request comes later (work running on another thread); the loop stops reading from the
// connection and calling onInput() until Resume::operator() is called, then calls onResume().
enum class After { Continue, Close, Wait };

// Wakes a connection whose Session returned After::Wait. Copyable, callable from any thread, and
// harmless once the connection (or the whole Server) is gone.
class Resume {
 public:
  struct Box;  // the worker's list of connections to resume, shared with every Resume
  Resume() = default;
  Resume(std::shared_ptr<Box> box, uint32_t slot, uint32_t generation)
      : box_(std::move(box)), slot_(slot), generation_(generation) {}
  void operator()() const;

 private:
  std::shared_ptr<Box> box_;
  uint32_t slot_ = 0;
  uint32_t generation_ = 0;
};

struct Resume::Box {
  std::mutex mu;
  int wakeFd = -1;                                     // -1 once the worker is gone
  std::vector<std::pair<uint32_t, uint32_t>> pending;  // slot, generation
};

class Session {
 public:
  virtual ~Session() = default;
  // `in` holds every byte received and not yet consumed. Consume whole requests only, append
  // their answers to `out`, and set `consumed`. Return Close to close the connection once `out`
  // has been sent (framing broken, a limit exceeded). The loop calls again while the call consumed
  // something and whole input may remain, and not while unsent output exceeds maxPendingOutput.
  // Return Wait (having consumed the request) to answer it later, see After.
  virtual After onInput(std::string_view in, size_t& consumed, Output& out) = 0;
  // After a Wait, once resumed, on the worker: append the answer that was waited for. The loop
  // then calls onInput() on the input held back meanwhile. Continue, Close or Wait again.
  virtual After onResume(Output&) { return After::Continue; }
};

class SessionFactory {
 public:
  virtual ~SessionFactory() = default;
  // Called on the worker thread that will own the connection. A null Session refuses it (closed
  // at once, counted in LoopStats::refused). `resume` wakes the connection after a Wait.
  virtual std::unique_ptr<Session> open(int worker, const PeerCred& peer, Resume resume) = 0;
};

enum class Backend { Auto, Uring, Epoll };

// A timeout <= 0 is off.
struct LoopConfig {
  int threads = 1;  // at least 1
  Backend backend = Backend::Auto;
  size_t maxConnections = 4096;  // accepted beyond this are closed at once
  // Connections one uid may hold; 0 is off. `reservedUids` are not capped, and only they may
  // take the last `reservedConnections` places of maxConnections.
  size_t maxConnectionsPerUid = 1024;
  std::vector<uid_t> reservedUids;
  size_t reservedConnections = 64;
  size_t maxPendingInput = 80 * 1024;   // unconsumed bytes per connection before it is closed
  size_t maxPendingOutput = 256 << 10;  // unsent bytes per connection before reading pauses
  // Unsent bytes across every connection. Past it, connections with a backlog stop being read
  // and, each tick, every worker closes its largest backlog; 0 is off.
  size_t maxBufferedOutput = 64 << 20;
  // A partial request (or unsent output) with no progress for this long closes the connection.
  int stallTimeoutMs = 10000;
  // Output owed for a whole stall window must drain at least this many bytes in it (or all of
  // it), or the connection is closed: a reader taking a byte now and then is not progress.
  size_t minDrainBytes = 1 << 20;
  int idleTimeoutMs = 300000;  // a connection with nothing pending is closed after this
};

// Counters, updated by the workers with relaxed atomics (they are statistics, not sync points).
struct LoopStats {
  std::atomic<uint64_t> accepted{0};
  std::atomic<uint64_t> refused{0};        // over maxConnections, or no Session from the factory
  std::atomic<uint64_t> refusedPerUid{0};  // of those, over maxConnectionsPerUid or the reserve
  std::atomic<uint64_t> shed{0};           // closed for the maxBufferedOutput budget
  std::atomic<uint64_t> slowDrain{0};      // closed for draining under minDrainBytes
  std::atomic<int64_t> bufferedOutput{0};  // unsent bytes now, every connection
  std::atomic<uint64_t> closed{0};
  std::atomic<uint64_t> timedOut{0};
  std::atomic<uint64_t> open{0};
  std::atomic<uint64_t> bytesIn{0};
  std::atomic<uint64_t> bytesOut{0};
};

class Server {
 public:
  virtual ~Server() = default;
  // Takes a listening, non-blocking, CLOEXEC Unix socket (not owned). With Backend::Auto, tries
  // io_uring and falls back to epoll with one warning logged.
  static Result<std::unique_ptr<Server>> create(int listenFd, const LoopConfig& config,
                                                SessionFactory& factory);
  // The same on several listening sockets (Unix or TCP), each accepted on by every worker.
  static Result<std::unique_ptr<Server>> create(std::vector<Listener> listeners,
                                                const LoopConfig& config, SessionFactory& factory);
  // Runs the workers; returns after stop() once every worker has finished. Call once. The worker
  // threads exist from create() on (each sets up its own ring there) and wait for run().
  virtual void run() = 0;
  // Thread- and signal-safe request to stop: stop accepting, answer what was already read,
  // flush what is owed (for up to 2 s), close, return from run(). May come before run().
  virtual void stop() = 0;
  virtual std::string_view backendName() const = 0;
  virtual const LoopStats& stats() const = 0;
};

}  // namespace tokend::daemon
