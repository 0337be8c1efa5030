// The per-connection protocol dispatch: text, HTTP and binary, all through Service::verify.
#include "daemon/session.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>

#include "base/clock.h"
#include "base/log.h"
#include "base/scope_exit.h"
#include "daemon/binary_protocol.h"
#include "daemon/http.h"
#include "daemon/text_protocol.h"
#include "shm/segment.h"

namespace tokend::daemon {

using verifier::Reason;

namespace {

constexpr std::string_view kSoftware = "tokend/0.1.0";
// Answer bytes one onInput() call produces before it hands them to the loop.
constexpr size_t kOutputBatch = 64 * 1024;

class ProtocolSession final : public Session {
 public:
  ProtocolSession(SessionFactoryImpl& f, Service::Worker& w, const PeerCred& peer, Resume resume)
      : f_(f), w_(w), peer_(peer), resume_(std::move(resume)) {}

  After onResume(Output& out) override {
    if (!write_) return After::Continue;
    out.bytes += write_->answer;
    const bool keepAlive = write_->keepAlive;
    write_.reset();
    return keepAlive ? After::Continue : After::Close;
  }

  After onInput(std::string_view in, size_t& consumed, Output& out) override {
    consumed = 0;
    Service& service = f_.service();
    service.beginBatch(w_);
    ScopeExit endBatch([&] { service.endBatch(w_); });
    mark_ = monotonicNanos();
    if (proto_ == Protocol::NeedMore) {
      proto_ = detectProtocol(in.substr(0, kMaxDetectBytes));
      if (proto_ == Protocol::NeedMore) return After::Continue;
      // TCP peers have no credentials: they get HTTP only (the binary protocol's segment
      // hand-over and usage reports rest on peer credentials; the text protocol is for shells on
      // this host, on the socket).
      if (peer_.listener != ListenerKind::Unix && proto_ != Protocol::Http) {
        w_.metrics().protocolErrors.fetch_add(1, std::memory_order_relaxed);
        appendTextError(out.bytes, "only HTTP is served on TCP listeners");
        consumed = in.size();
        return After::Close;
      }
      if (proto_ == Protocol::Unknown) {
        w_.metrics().protocolErrors.fetch_add(1, std::memory_order_relaxed);
        appendTextError(out.bytes, "unknown protocol");
        consumed = in.size();
        return After::Close;
      }
    }
    planPrefetch(in);
    while (consumed < in.size()) {
      std::string_view rest = in.substr(consumed);
      size_t used = 0;
      After after = After::Continue;
      switch (proto_) {
        case Protocol::Text:
          after = text(rest, used, out);
          break;
        case Protocol::Http:
          after = http(rest, used, out);
          break;
        case Protocol::Binary:
          after = binary(rest, used, out);
          break;
        default:
          return After::Close;
      }
      consumed += used;
      if (after != After::Continue) return after;
      if (used == 0) break;  // need more bytes
      // Answer a batch, then let the loop send it: it calls again only while unsent output is
      // under --max-pending-output. Without this one read of pipelined small requests with big
      // answers (GET /metrics) would be answered whole: 80 KiB in, hundreds of MiB out.
      if (out.bytes.size() >= kOutputBatch) break;
      // A file descriptor rides on the next send: answer what follows after it is sent.
      if (out.passFd >= 0) break;
    }
    return After::Continue;
  }

 private:
  // Cache slots are prefetched for the verifications of a received batch (binary and text: their
  // parse is cheap enough to run twice; an HTTP request's is not), kLookahead requests ahead of
  // the one being answered: far enough for the loads to land, near enough that the prefetches
  // do not fill the CPU's line-fill buffers and stall (issuing all of them at once did).
  static constexpr size_t kPrefetchAhead = 64;
  static constexpr size_t kLookahead = 4;

  void planPrefetch(std::string_view in) {
    aheadCount_ = 0;
    aheadNext_ = 0;
    size_t at = 0;
    // At most kPrefetchAhead requests are looked at, whatever they are: counting only the
    // verifications found made a stream of PINGs (or usage reports) parse the whole held-back
    // input on every call, quadratic work that starved every other connection on the worker.
    for (size_t seen = 0; seen < kPrefetchAhead && at < in.size(); ++seen) {
      std::string_view rest = in.substr(at);
      if (proto_ == Protocol::Binary) {
        FrameParse p = parseFrame(rest);
        if (p.status != ParseStatus::Complete) break;
        at += p.consumed;
        if (p.frame.header.opcode != Opcode::Verify) continue;
        if (auto q = decodeVerify(p.frame.payload)) ahead_[aheadCount_++] = q->token;
      } else if (proto_ == Protocol::Text) {
        TextParse p = parseTextLine(rest);
        if (p.status != ParseStatus::Complete) break;
        at += p.consumed;
        if (p.request.command == TextCommand::Verify) ahead_[aheadCount_++] = p.request.query.token;
      } else {
        break;
      }
    }
    for (size_t i = 0; i < kLookahead && i < aheadCount_; ++i) f_.service().prefetch(ahead_[i]);
  }
  // Called as each verification of the batch starts, in the order planPrefetch() saw them.
  void advancePrefetch() {
    size_t next = aheadNext_++ + kLookahead;
    if (next < aheadCount_) f_.service().prefetch(ahead_[next]);
  }

  // One clock read per request: a request's time runs from the end of the one before it in the
  // batch (or the batch's arrival) to its encoded answer, so it includes its parse.
  int64_t startTimer() const { return mark_; }
  void count(Proto p, Reason r, int64_t start) {
    const int64_t now = monotonicNanos();
    w_.metrics().count(p, r, static_cast<uint64_t>(now - start));
    mark_ = now;
  }

  After text(std::string_view in, size_t& used, Output& out) {
    TextParse p = parseTextLine(in);
    if (p.status == ParseStatus::NeedMore) return After::Continue;
    used = p.consumed;
    if (p.status == ParseStatus::Error) {
      w_.metrics().protocolErrors.fetch_add(1, std::memory_order_relaxed);
      appendTextError(out.bytes, kTextLineTooLong);
      used = in.size();
      return After::Close;
    }
    switch (p.request.command) {
      case TextCommand::Ping:
        appendTextPong(out.bytes);
        break;
      case TextCommand::Invalid:
        appendTextError(out.bytes, p.request.error);
        break;
      case TextCommand::Verify: {
        advancePrefetch();
        int64_t start = startTimer();
        VerifyAnswer a;
        if (!f_.service().verify(w_, p.request.query, a)) {
          appendTextError(out.bytes, "internal error");
          break;
        }
        appendTextAnswer(out.bytes, a);
        count(Proto::Text, a.reason, start);
        break;
      }
    }
    return After::Continue;
  }

  After http(std::string_view in, size_t& used, Output& out) {
    HttpParse p = parseHttpRequest(in, req_);
    if (p.status == ParseStatus::NeedMore) return After::Continue;
    if (p.status == ParseStatus::Error) {
      w_.metrics().protocolErrors.fetch_add(1, std::memory_order_relaxed);
      appendParseErrorResponse(out.bytes, p);
      used = in.size();
      return After::Close;
    }
    used = p.consumed;
    scratch_.reset();
    const std::string_view path = req_.path, m = req_.method;
    bool get = m == "GET" || m == "HEAD";
    if (peer_.listener == ListenerKind::Metrics && path != "/metrics" && path != "/healthz" &&
        path != "/readyz") {
      // --metrics-listen: health and metrics, which hold no secret; nothing else exists there.
      appendJsonError(out.bytes, 404, req_.keepAlive, "Not found.",
                      "this listener serves /metrics, /healthz and /readyz only");
    } else if (isVerifyPath(path)) {
      // Any method, any path below: gateways forward the client's (SPEC 7). A body was read
      // within the limits by the parser and is ignored.
      int64_t start = startTimer();
      auto q = extractVerifyQuery(req_, scratch_);
      const RouteOutcome route =
          q ? applyRouteRules(f_.routeRules(), req_, *q, route_) : RouteOutcome::NotApplied;
      if (!q || route == RouteOutcome::ObjectTooLong) {
        VerifyAnswer bad;
        bad.reason = Reason::BadRequest;
        appendVerifyResponse(out.bytes, bad, req_.keepAlive);
      } else {
        VerifyAnswer a;
        if (!f_.service().verify(w_, *q, a)) {
          appendJsonError(out.bytes, 500, req_.keepAlive, "Internal error.",
                          "the key database could not be read");
        } else if (route == RouteOutcome::NoRule && a.reason == Reason::Ok) {
          // Authenticated, but no rule says what this route needs: refuse (docs/protocol.md).
          // Counted as scope: the 403 of a permission the token does not hold.
          appendNoRuleResponse(out.bytes, req_.keepAlive);
          count(Proto::Http, Reason::Scope, start);
        } else {
          appendVerifyResponse(out.bytes, a, req_.keepAlive);
          count(Proto::Http, a.reason, start);
        }
      }
    } else if (path == "/healthz" && get) {
      appendStatusLine(out.bytes, 200);
      appendBody(out.bytes, req_.keepAlive, "text/plain; charset=utf-8", "ok\n");
    } else if (path == "/readyz" && get) {
      std::string why = f_.notReady();
      appendStatusLine(out.bytes, why.empty() ? 200 : 503);
      appendBody(out.bytes, req_.keepAlive, "text/plain; charset=utf-8",
                 why.empty() ? std::string("ok\n") : why + "\n");
    } else if (path == "/v1/introspect" && f_.introspector() != nullptr) {
      int64_t start = startTimer();
      if (auto r = f_.introspector()->handle(w_, req_, scratch_, out.bytes))
        count(Proto::Http, *r, start);
    } else if (path == "/metrics" && get) {
      std::string body = f_.renderMetrics();
      appendStatusLine(out.bytes, 200);
      appendBody(out.bytes, req_.keepAlive, "text/plain; version=0.0.4; charset=utf-8", body);
    } else if (path.starts_with("/api/v2/") && !get) {
      // A write commits with an fsync: it runs on the writer thread, so that verifications on
      // this worker go on meanwhile. This connection's later requests wait for its answer.
      return postWrite(in.substr(0, used));
    } else if (path.starts_with("/api/v2/")) {
      f_.management().handle(w_, req_, scratch_, out.bytes);
    } else if (path == "/healthz" || path == "/readyz" || path == "/metrics") {
      appendJsonError(out.bytes, 405, req_.keepAlive, "Method not allowed.", std::string(m));
    } else {
      appendJsonError(out.bytes, 404, req_.keepAlive, "Not found.", std::string(path));
    }
    if (m == "HEAD") {
      // A HEAD answer carries the headers of the GET answer and no body.
      auto bodyAt = out.bytes.rfind("\r\n\r\n");
      if (bodyAt != std::string::npos) out.bytes.resize(bodyAt + 4);
    }
    return req_.keepAlive ? After::Continue : After::Close;
  }

  After binary(std::string_view in, size_t& used, Output& out) {
    FrameParse p = parseFrame(in);
    if (p.status == ParseStatus::NeedMore) return After::Continue;
    if (p.status == ParseStatus::Error) {
      w_.metrics().protocolErrors.fetch_add(1, std::memory_order_relaxed);
      encodeError(out.bytes, 0, p.error, p.message);
      used = in.size();
      return After::Close;
    }
    used = p.consumed;
    const uint64_t id = p.frame.header.requestId;
    const std::string_view payload = p.frame.payload;
    switch (p.frame.header.opcode) {
      case Opcode::Hello: {
        auto h = decodeHello(payload);
        if (!h) return badPayload(out, id, h.error());
        Hello reply;
        reply.version = kBinaryVersion;
        reply.features =
            kFeatureUsageReport | (f_.shmFd() >= 0 && f_.shmAllowed(peer_) ? kFeatureShm : 0);
        // The grant byte changes VERIFY_RESULT's layout: only for a client that asked for it.
        grantFlags_ = (h->features & kFeatureGrantFlags) != 0;
        if (grantFlags_) reply.features |= kFeatureGrantFlags;
        reply.software = kSoftware;
        encodeHello(out.bytes, id, reply);
        break;
      }
      case Opcode::Ping:
        encodePong(out.bytes, id);
        break;
      case Opcode::Verify: {
        advancePrefetch();
        int64_t start = startTimer();
        auto q = decodeVerify(payload);
        if (!q) return badPayload(out, id, q.error());
        VerifyAnswer a;
        if (!f_.service().verify(w_, *q, a)) {
          encodeError(out.bytes, id, ErrorCode::Internal, "the key database could not be read");
          break;
        }
        if (auto e = encodeVerifyResult(out.bytes, id, a, grantFlags_); !e) {
          encodeError(out.bytes, id, ErrorCode::Internal, e.error().message);
        }
        count(Proto::Binary, a.reason, start);
        break;
      }
      case Opcode::ShmAttach: {
        if (auto e = decodeEmpty(payload); !e) return badPayload(out, id, e.error());
        if (!f_.shmAllowed(peer_)) {
          f_.service().metrics().shmRefusals.fetch_add(1, std::memory_order_relaxed);
          encodeError(
              out.bytes, id, ErrorCode::NotPermitted,
              fmt::format(
                  "uid {} gid {} may not map the cache (see --shm-allow-uid, --shm-allow-gid)",
                  peer_.uid, peer_.gid));
          break;
        }
        if (f_.shmFd() < 0) {
          encodeError(out.bytes, id, ErrorCode::Unavailable,
                      "the shared-memory cache is not available");
          break;
        }
        f_.service().metrics().shmGrants.fetch_add(1, std::memory_order_relaxed);
        encodeShmGranted(out.bytes, id,
                         ShmGrant{shm::kLayoutVersion, f_.service().cache().segment().size()});
        out.passFd = f_.shmFd();
        attached_ = true;
        break;
      }
      case Opcode::UsageReport: {
        auto r = decodeUsageReport(payload);
        if (!r) return badPayload(out, id, r.error());
        uses_.clear();
        for (size_t i = 0; i < r->count; ++i) {
          UsageEntry e = r->entry(i);
          Use u;
          std::copy_n(e.tokenId.data(), u.id.size(), u.id.data());
          u.at = e.lastUsed;
          uses_.push_back(u);
        }
        // Only a connection handed the segment (so a peer allowed it) may report uses, and only
        // of entries the daemon verified lately (Service::reportUses): a report extends sessions.
        const size_t accepted = f_.service().reportUses(uses_, attached_);
        encodeUsageAck(out.bytes, id, static_cast<uint32_t>(accepted));
        break;
      }
      default:
        encodeError(out.bytes, id, ErrorCode::UnknownOpcode,
                    fmt::format("opcode {:#04x} is not a request",
                                static_cast<unsigned>(p.frame.header.opcode)));
        break;
    }
    return After::Continue;
  }

  // A management write in flight: its request's bytes (the parse's views point into them) and,
  // once the writer ran it, the answer. Shared with the job, which may outlive the Session.
  struct Write {
    std::string request;
    std::string answer;
    bool keepAlive = true;
  };

  After postWrite(std::string_view request) {
    write_ = std::make_shared<Write>();
    write_->request.assign(request);
    write_->keepAlive = req_.keepAlive;
    f_.service().post([write = write_, &f = f_, resume = resume_] {
      HttpRequest req;
      auto scratch = std::make_unique<DecodeBuffer>();
      // The same bytes parsed whole a moment ago on the worker.
      if (parseHttpRequest(write->request, req).status == ParseStatus::Complete) {
        f.management().handle(f.writerWorker(), req, *scratch, write->answer);
      } else {
        appendJsonError(write->answer, 500, write->keepAlive, "Internal error.",
                        "the request could not be parsed again");
      }
      resume();
    });
    return After::Wait;
  }

  After badPayload(Output& out, uint64_t id, const Error& e) {
    w_.metrics().protocolErrors.fetch_add(1, std::memory_order_relaxed);
    encodeError(out.bytes, id, ErrorCode::BadPayload, e.message);
    return After::Continue;
  }

  SessionFactoryImpl& f_;
  Service::Worker& w_;
  PeerCred peer_;
  Resume resume_;
  std::shared_ptr<Write> write_;  // the management write waited for, if any
  Protocol proto_ = Protocol::NeedMore;
  int64_t mark_ = 0;  // when the last request's answer was encoded (see count())
  std::array<std::string_view, kPrefetchAhead> ahead_{};  // this batch's tokens (planPrefetch)
  size_t aheadCount_ = 0;
  size_t aheadNext_ = 0;
  HttpRequest req_;
  DecodeBuffer scratch_;
  RouteMatch route_;  // the object a route rule built, for the request being answered
  std::vector<Use> uses_;
  bool attached_ = false;    // SHM_GRANTED was sent on this connection
  bool grantFlags_ = false;  // this connection's HELLO asked for kFeatureGrantFlags
};

}  // namespace

SessionFactoryImpl::SessionFactoryImpl(Service& service, Management& management,
                                       SessionConfig config, int threads)
    : service_(service), management_(management), config_(std::move(config)) {
  for (int i = 0; i < threads; ++i) {
    auto w = service_.makeWorker(i);
    if (!w) {
      log::error("Failed to make worker {}: {}", i, w.error().message);
      std::abort();
    }
    workers_.push_back(std::move(*w));
  }
  // The writer thread's own: management writes run there (its metrics shard is the spare one).
  if (auto w = service_.makeWorker(threads)) {
    writerWorker_ = std::move(*w);
  } else {
    log::error("Failed to make the writer's worker: {}", w.error().message);
    std::abort();
  }
  // Clients trust what they read in the segment, and judge its expiries by the wall clock: hand
  // it out only when nobody can write it (the seal) and the daemon's clock is the wall clock (a
  // test build's TOKEND_CLOCK_OFFSET would make the two disagree). Else the socket answers all.
  if (!service_.cache().segment().writeSealed()) {
    log::warn(
        "The cache segment could not be sealed against writes (F_SEAL_FUTURE_WRITE needs Linux "
        "5.1): it is handed to no client, which verify on the socket instead");
  } else if (clockOffset() != 0) {
    log::warn(
        "The clock is moved by TOKEND_CLOCK_OFFSET ({} s): the cache segment is handed to "
        "no client, since clients read the wall clock",
        clockOffset());
  } else if (auto fd = service_.cache().openReadOnly()) {
    shmFd_ = std::move(*fd);
  } else {
    log::warn("Failed to open a read-only descriptor of the cache segment: {}", fd.error().message);
  }
}

std::unique_ptr<Session> SessionFactoryImpl::open(int worker, const PeerCred& peer, Resume resume) {
  return std::make_unique<ProtocolSession>(*this, *workers_.at(worker), peer, std::move(resume));
}

bool SessionFactoryImpl::shmAllowed(const PeerCred& peer) const {
  // A TCP peer's uid is nobody's: never compare it (its sessions speak HTTP only anyway).
  if (peer.listener != ListenerKind::Unix) return false;
  if (peer.uid == ::getuid()) return true;
  const auto& gids = config_.shmAllowGids;
  auto allowedGid = [&](gid_t g) { return std::find(gids.begin(), gids.end(), g) != gids.end(); };
  if (std::find(config_.shmAllowUids.begin(), config_.shmAllowUids.end(), peer.uid) !=
          config_.shmAllowUids.end() ||
      allowedGid(peer.gid))
    return true;
  if (gids.empty() || peer.fd < 0) return false;
  // The supplementary groups too (`usermod -aG`), as the peer held them at connect().
  std::vector<gid_t> groups(64);
  socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
  if (::getsockopt(peer.fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0) {
    if (errno != ERANGE) return false;
    groups.resize(len / sizeof(gid_t));
    if (::getsockopt(peer.fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0) return false;
  }
  groups.resize(len / sizeof(gid_t));
  return std::any_of(groups.begin(), groups.end(), allowedGid);
}

std::string SessionFactoryImpl::notReady() const {
  // SPEC 7: ready when it can answer correctly: the key database reads, the cache is mapped, and
  // (SPEC 11) a replica is current.
  if (service_.cache().slotCount() == 0) return "the shared-memory cache is not mapped";
  auto reader = service_.db().reader();
  if (!reader) return "the key database cannot be read: " + reader.error().message;
  if (auto b = (*reader)->begin(); !b)
    return "the key database cannot be read: " + b.error().message;
  (*reader)->end();
  return notReady_ ? notReady_() : std::string();
}

std::string SessionFactoryImpl::renderMetrics() const {
  const Metrics& m = service_.metrics();
  std::string o;
  auto sum = [&](auto field) {
    uint64_t s = 0;
    for (int i = 0; i < m.shardCount(); ++i) s += field(m.at(i)).load(std::memory_order_relaxed);
    return s;
  };
  o += "# HELP tokend_requests_total Verification requests answered, by protocol and reason.\n";
  o += "# TYPE tokend_requests_total counter\n";
  const char* protos[] = {"text", "http", "binary"};
  for (int p = 0; p < kProtoCount; ++p) {
    for (int r = 0; r < verifier::kReasonCount; ++r) {
      uint64_t n = sum([&](const MetricsShard& s) -> const std::atomic<uint64_t>& {
        return s.requests[p * verifier::kReasonCount + r];
      });
      o += fmt::format("tokend_requests_total{{protocol=\"{}\",reason=\"{}\"}} {}\n", protos[p],
                       verifier::reasonName(static_cast<Reason>(r)), n);
    }
  }
  o += "# HELP tokend_request_duration_seconds Time spent on a request: parse, verification, "
       "encoded answer.\n";
  o += "# TYPE tokend_request_duration_seconds histogram\n";
  uint64_t cumulative = 0;
  for (int b = 0; b < kLatencyBuckets; ++b) {
    cumulative +=
        sum([&](const MetricsShard& s) -> const std::atomic<uint64_t>& { return s.latency[b]; });
    if (b % 4 == 3 || b == kLatencyBuckets - 1) {
      o += fmt::format("tokend_request_duration_seconds_bucket{{le=\"{:.9f}\"}} {}\n",
                       latencyBucketUpper(b) / 1e9, cumulative);
    }
  }
  o += fmt::format("tokend_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n", cumulative);
  o += fmt::format("tokend_request_duration_seconds_sum {:.9f}\n",
                   sum([](const MetricsShard& s) -> const std::atomic<uint64_t>& {
                     return s.latencySumNanos;
                   }) / 1e9);
  o += fmt::format("tokend_request_duration_seconds_count {}\n", cumulative);

  auto counter = [&](const char* name, const char* help, uint64_t v) {
    o += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, v);
  };
  auto gauge = [&](const char* name, const char* help, uint64_t v) {
    o += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, v);
  };
  shm::CacheStats c = service_.cache().stats();
  counter("tokend_cache_hits_total", "Cache lookups that found the token.", c.hits);
  counter("tokend_cache_misses_total", "Cache lookups that did not.", c.misses + c.busy);
  counter("tokend_cache_inserts_total", "Compiled tokens put in the cache.", c.inserts);
  counter("tokend_cache_evictions_total", "Cached tokens displaced by others.", c.evictions);
  counter("tokend_cache_invalidations_total", "Cached tokens erased because the database changed.",
          c.invalidations);
  counter("tokend_cache_user_invalidations_total",
          "User changes that made the user's cached tokens stale.", c.userInvalidations);
  counter(
      "tokend_decided_from_cache_total", "Verdicts decided from the cache.",
      sum([](const MetricsShard& s) -> const std::atomic<uint64_t>& { return s.cacheDecided; }));
  counter("tokend_decided_from_db_total", "Verdicts that needed the key database.",
          sum([](const MetricsShard& s) -> const std::atomic<uint64_t>& { return s.dbDecided; }));
  counter(
      "tokend_protocol_errors_total", "Requests refused as malformed.",
      sum([](const MetricsShard& s) -> const std::atomic<uint64_t>& { return s.protocolErrors; }));
  counter("tokend_changelog_rounds_total", "Changelog reads after a commit.",
          m.invalidationRounds.load());
  counter("tokend_changelog_gaps_total", "Changelog gaps that dropped the whole cache.",
          m.invalidationGaps.load());
  counter("tokend_writeback_batches_total", "Write-back transactions committed.",
          m.writebackBatches.load());
  counter("tokend_writeback_tokens_total", "Token records written back.", m.writebackTokens.load());
  counter("tokend_writeback_errors_total", "Write-back transactions that failed.",
          m.writebackErrors.load());
  counter("tokend_usage_reports_total", "Usage reports received from clients.",
          m.usageReports.load());
  counter("tokend_usage_report_entries_accepted_total",
          "Uses in usage reports accepted for the write-back.", m.usageAccepted.load());
  o += "# HELP tokend_usage_reports_refused_total Uses in usage reports refused, by reason.\n";
  o += "# TYPE tokend_usage_reports_refused_total counter\n";
  for (int r = 0; r < kUseRefusalCount; ++r) {
    o += fmt::format("tokend_usage_reports_refused_total{{reason=\"{}\"}} {}\n",
                     useRefusalName(static_cast<UseRefusal>(r)), m.usageRefused[r].load());
  }
  counter("tokend_shm_grants_total", "Cache segments handed to clients.", m.shmGrants.load());
  counter("tokend_shm_refusals_total", "Cache segment requests refused.", m.shmRefusals.load());
  if (loopStats_) {
    counter("tokend_connections_accepted_total", "Connections accepted.",
            loopStats_->accepted.load());
    counter("tokend_connections_refused_total", "Connections refused over --max-connections.",
            loopStats_->refused.load());
    counter("tokend_connections_timed_out_total", "Connections closed for stalling or idling.",
            loopStats_->timedOut.load());
    counter("tokend_connections_refused_per_uid_total",
            "Connections refused over --max-connections-per-uid or the reserved places.",
            loopStats_->refusedPerUid.load());
    counter("tokend_connections_shed_total",
            "Connections closed because buffered output passed --max-buffered-output.",
            loopStats_->shed.load());
    counter("tokend_connections_slow_drain_total",
            "Connections closed for taking their answers slower than --min-drain-bytes.",
            loopStats_->slowDrain.load());
    gauge("tokend_connections_open", "Connections open now.", loopStats_->open.load());
    gauge("tokend_buffered_output_bytes", "Answer bytes not yet sent, every connection.",
          static_cast<uint64_t>(std::max<int64_t>(0, loopStats_->bufferedOutput.load())));
    counter("tokend_received_bytes_total", "Bytes received.", loopStats_->bytesIn.load());
    counter("tokend_sent_bytes_total", "Bytes sent.", loopStats_->bytesOut.load());
  }
  gauge("tokend_cache_slots", "Slots in the shared-memory cache.", service_.cache().slotCount());
  gauge("tokend_database_map_bytes", "Size of the LMDB map.", service_.db().mapSize());
  if (extraMetrics_) o += extraMetrics_();
  return o;
}

}  // namespace tokend::daemon
