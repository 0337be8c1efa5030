// libtokend: the C ABI of tokend/client.h: the shared-memory fast path, the socket path with
// pipelined batches and transparent reconnects, and the queueing of fast-path uses.
#include "tokend/client.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/clock.h"
#include "client/channel.h"
#include "client/fast.h"
#include "client/monitor.h"
#include "daemon/binary_protocol.h"
#include "shm/cache.h"
#include "shm/codec.h"
#include "verifier/catalog.h"
#include "verifier/lifetime.h"
#include "verifier/token.h"
#include "verifier/verify.h"

namespace {

using namespace tokend;
using verifier::LoginType;
using verifier::Reason;

constexpr int kDefaultTimeoutMs = 5000;

// No valid token, permission, object or owner is anywhere near this long. A longer one is sent as
// "?", which every check refuses exactly as it refuses the original (malformed token, or a
// permission/object/owner that does not parse: bad_request after authentication), so the verdict
// is the same and every request fits in a frame.
constexpr size_t kMaxField = 1024;
constexpr std::string_view kOversize = "?";

// A socket window: requests written before their answers are read. Small enough that the answers
// of one window fit in the socket buffers (no deadlock with a daemon that stops reading while its
// output is unsent), large enough to amortise the system calls.
constexpr size_t kWindowRequests = 256;
constexpr size_t kWindowBytes = 32 * 1024;

// The fast path queues at most one use per token per minute (the monitor enforces the same on
// the wire); this direct-mapped table is how the verifying thread remembers, without allocating.
constexpr int64_t kUseSpacingSeconds = 60;
constexpr size_t kFilterSlots = 1024;

struct FilterSlot {
  std::array<char, shm::kTokenIdLength> id{};
  int64_t at = 0;
};

// The parsed form of the last (permission, object, owner) asked. Parsing them (a catalog search,
// two UUIDs) costs as much as the rest of a cache hit, and a gateway asks the same question of
// many tokens in a row. A pure function of the strings and the compiled-in catalog: nothing here
// can go stale, and nothing of the token is kept.
class QueryMemo {
 public:
  const verifier::Query& parse(std::string_view perm, std::string_view object,
                               std::string_view owner) {
    if (valid_ && perm == view(0) && object == view(1) && owner == view(2)) return query_;
    query_ = verifier::parseQuery(perm, object, owner);
    valid_ = perm.size() <= kCap && object.size() <= kCap && owner.size() <= kCap;
    if (valid_) {
      store(0, perm);
      store(1, object);
      store(2, owner);
    }
    return query_;
  }

 private:
  static constexpr size_t kCap = 96;  // longer than any valid permission, object or owner
  std::string_view view(int i) const { return {text_[i], len_[i]}; }
  void store(int i, std::string_view s) {
    std::memcpy(text_[i], s.data(), s.size());
    len_[i] = s.size();
  }
  verifier::Query query_;
  bool valid_ = false;
  char text_[3][kCap];
  size_t len_[3] = {0, 0, 0};
};

constexpr const char* kReasonNames[] = {
    "ok",    "missing",    "malformed", "unknown",     "bad_secret",  "expired", "user_inactive",
    "scope", "allow_list", "role",      "bad_request", "unavailable",
};
static_assert(std::size(kReasonNames) == verifier::kReasonCount);
// `owned` went into what was tail padding: programs built against the header without it allocate
// the same size and find every other field where it was (LP64).
static_assert(sizeof(void*) != 8 ||
              (sizeof(tokend_result) == 136 && offsetof(tokend_result, via_shm) == 128 &&
               offsetof(tokend_result, owned) == 132));

const char* reasonText(Reason r) {
  const auto i = static_cast<unsigned>(r);
  return i < std::size(kReasonNames) ? kReasonNames[i] : "unknown";
}

std::string_view field(const char* s) {
  if (s == nullptr) return {};
  const size_t n = ::strnlen(s, kMaxField + 1);
  return n > kMaxField ? kOversize : std::string_view(s, n);
}

void clearIdentity(tokend_result& out) {
  out.user_id[0] = out.username[0] = out.token_id[0] = out.login_type[0] = '\0';
  out.expires_at = 0;
}

void copyField(char* dst, size_t cap, std::string_view src) {
  const size_t n = std::min(src.size(), cap - 1);
  std::memcpy(dst, src.data(), n);
  dst[n] = '\0';
}

// Fills a verdict; the identity only for an allowed one, as the binary protocol carries it.
void fill(tokend_result& out, Reason reason, int viaShm, client::UuidText* text = nullptr,
          const uint8_t* userId = nullptr, std::string_view username = {},
          std::string_view tokenId = {}, LoginType loginType = LoginType::Token,
          int64_t expiresAt = 0, bool owned = false) {
  out.allowed = reason == Reason::Ok ? 1 : 0;
  out.http_status = verifier::httpStatus(reason);
  out.reason = reasonText(reason);
  out.via_shm = viaShm;
  out.owned = reason == Reason::Ok && owned ? 1 : 0;
  clearIdentity(out);
  if (reason != Reason::Ok || userId == nullptr) return;
  text->format(userId, out.user_id);
  copyField(out.username, sizeof out.username, username);
  copyField(out.token_id, sizeof out.token_id, tokenId);
  copyField(out.login_type, sizeof out.login_type, daemon::loginTypeWord(loginType));
  out.expires_at = expiresAt;
}

int errorCode(const Error& e) {
  return e.code < 0 ? e.code : -EIO;
}

bool retryable(int rc) {
  return rc == -ECONNRESET || rc == -EPIPE || rc == -ENOTCONN || rc == -ECONNABORTED;
}

}  // namespace

struct tokend_client {
  std::string path;
  int timeoutMs = kDefaultTimeoutMs;
  bool wantShm = true;
  bool refused = false;     // the daemon refused the segment on the current connection
  bool grantFlags = false;  // the daemon's VERIFY_RESULTs carry the grant byte (HELLO)
  std::optional<client::Channel> chan;
  std::unique_ptr<shm::CacheReader> reader;
  uint64_t mappedGen = 0;
  std::unique_ptr<client::Monitor> monitor;
  verifier::Sha256 sha;
  shm::CacheEntry entry{};
  std::string out;
  std::vector<uint32_t> pending;
  std::unique_ptr<FilterSlot[]> filter = std::make_unique<FilterSlot[]>(kFilterSlots);
  QueryMemo queries;
  client::SecondsClock clock;
  client::UuidText uuidText;
  std::string daemonVersion;
  std::string lastError;

  int fail(const Error& e) {
    lastError = e.message;
    return errorCode(e);
  }

  // The fast path may decide only from a segment that a live daemon still updates.
  bool fastUsable() const {
    return wantShm && reader && monitor && mappedGen == monitor->liveGeneration();
  }

  // Asks the daemon on `chan` for its segment and maps it unless it is the one already mapped.
  // A refusal or a segment this library cannot read is not an error (the socket answers); only
  // a connection that breaks is.
  int attach() {
    auto fd = chan->attachSegment();
    if (!fd) {
      const int rc = errorCode(fd.error());
      lastError = fd.error().message;
      if (rc == -EACCES) {
        refused = true;
        return 0;
      }
      if (rc == -EOPNOTSUPP || rc == -EPROTO) return 0;
      return rc;
    }
    refused = false;
    auto gen = client::segmentGeneration(fd->get());
    if (!gen) {
      lastError = gen.error().message;
      return 0;
    }
    if (reader && *gen == mappedGen) {
      if (monitor) monitor->confirm(mappedGen);
      return 0;
    }
    auto r = shm::CacheReader::attach(fd->get(), verifier::catalog::version());
    if (!r) {
      lastError = "Failed to map tokend's segment: " + r.error().message;
      return 0;
    }
    if (!monitor) {
      auto m = std::make_unique<client::Monitor>(path, timeoutMs);
      if (auto s = m->start(); !s) {
        lastError = s.error().message;
        return 0;
      }
      monitor = std::move(m);
    }
    reader = std::make_unique<shm::CacheReader>(std::move(*r));
    mappedGen = *gen;
    monitor->confirm(mappedGen);
    return 0;
  }

  // A new connection: HELLO, then the segment when the fast path is wanted.
  int connect() {
    chan.reset();
    auto ch = client::Channel::open(path, timeoutMs);
    if (!ch) return fail(ch.error());
    uint32_t features = daemon::kFeatureUsageReport | daemon::kFeatureGrantFlags |
                        (wantShm ? daemon::kFeatureShm : 0);
    auto h = ch->hello(features);
    if (!h) return fail(h.error());
    grantFlags = (h->features & daemon::kFeatureGrantFlags) != 0;
    daemonVersion = std::move(h->software);
    chan.emplace(std::move(*ch));
    refused = false;
    if (wantShm) {
      if (int rc = attach(); rc < 0) {
        chan.reset();
        return rc;
      }
    }
    return 0;
  }

  // Decides `r` in this process when the segment can; false sends it to the socket.
  bool fast(const tokend_request& r, tokend_result& res) {
    if (!fastUsable()) return false;
    const std::string_view token = field(r.token);
    if (token.empty()) {
      fill(res, Reason::Missing, 1);
      return true;
    }
    const auto parsed = client::parseTokenFast(token);
    if (!parsed) {
      fill(res, Reason::Malformed, 1);
      return true;
    }
    if (reader->lookup(parsed->id, entry) != shm::LookupResult::Hit) return false;
    const verifier::Query& q = queries.parse(field(r.permission), field(r.object), field(r.owner));
    const int64_t now = clock.now();
    const auto reason = shm::decideFromEntry(entry, sha.digest(parsed->secret), q, now);
    if (!reason) return false;
    const bool due = *reason == Reason::Ok && useDue(now);
    // The daemon takes a reported use only of an entry it verified lately (shm::useReportable):
    // a use it would refuse goes through the socket, where the daemon counts it itself (and
    // marks the entry verified again, so the next ones are reported).
    if (due && !shm::useReportable(entry, now)) return false;
    fill(res, *reason, 1, &uuidText, entry.userId, entry.name(), entry.id(),
         static_cast<LoginType>(entry.loginType), entry.expiresAt,
         *reason == Reason::Ok && shm::grantOwned(entry, q));
    if (due) noteUse(now);
    return true;
  }

  // Whether a use of `entry` at `now` may change last_used or the expiry. The daemon's refresh
  // setting is not known here: assume it is on (a use it then ignores is cheap).
  bool useDue(int64_t now) const {
    static const verifier::LifetimeConfig kAssumed{};
    return verifier::usageUpdate(static_cast<LoginType>(entry.loginType), entry.expiresAt,
                                 entry.lifetimeSeconds, entry.lastUsed, now, kAssumed)
        .any();
  }

  // Queues the use of `entry` (useDue) for the daemon.
  void noteUse(int64_t now) {
    uint32_t h = 2166136261u;  // FNV-1a: ids are random already, this only spreads them
    for (char ch : entry.id()) h = (h ^ static_cast<uint8_t>(ch)) * 16777619u;
    FilterSlot& f = filter[h % kFilterSlots];
    if (std::memcmp(f.id.data(), entry.tokenId, shm::kTokenIdLength) == 0 &&
        now - f.at < kUseSpacingSeconds) {
      return;
    }
    client::UseRecord rec;
    std::memcpy(rec.id.data(), entry.tokenId, shm::kTokenIdLength);
    rec.at = now;
    if (monitor->queueUse(rec)) {
      f.id = rec.id;
      f.at = now;
    }
  }

  // Sends requests idx[0..n) on the current connection and reads their answers.
  int exchangeOnce(const tokend_request* reqs, tokend_result* res, const uint32_t* idx, size_t n) {
    out.clear();
    const uint64_t first = chan->nextRequestId();
    for (size_t k = 0; k < n; ++k) {
      const tokend_request& r = reqs[idx[k]];
      daemon::VerifyQuery q{field(r.token), field(r.permission), field(r.object), field(r.owner)};
      const uint64_t id = k == 0 ? first : chan->nextRequestId();
      if (auto e = daemon::encodeVerify(out, id, q); !e) return fail(e.error());
    }
    auto sent = chan->send(out);
    // The request bytes hold tokens: do not leave them in a buffer that outlives the call.
    OPENSSL_cleanse(out.data(), out.size());
    if (!sent) return fail(sent.error());
    for (size_t k = 0; k < n; ++k) {
      auto f = chan->next();
      if (!f) return fail(f.error());
      if (f->header.requestId != first + k) {
        return fail(makeError("tokend answered out of order", -EPROTO));
      }
      if (f->header.opcode == daemon::Opcode::Error) {
        auto e = daemon::decodeError(f->payload);
        if (e && e->code == daemon::ErrorCode::Internal) {
          return fail(makeError("tokend failed: " + std::string(e->message), -EIO));
        }
        return fail(makeError(
            "tokend refused the request: " + (e ? std::string(e->message) : std::string("?")),
            -EPROTO));
      }
      if (f->header.opcode != daemon::Opcode::VerifyResult) {
        return fail(makeError("tokend sent an unexpected frame", -EPROTO));
      }
      auto v = daemon::decodeVerifyResult(f->payload, grantFlags);
      if (!v) return fail(makeError("tokend's answer does not decode", -EPROTO));
      const daemon::VerifyAnswer& a = v->answer;
      // A daemon without grant flags cannot say: assume the grant rests on the owner whenever it
      // could, so that the caller checks rather than trusts.
      const tokend_request& r = reqs[idx[k]];
      const bool owned =
          grantFlags ? a.owned : !field(r.permission).empty() && !field(r.owner).empty();
      fill(res[idx[k]], a.reason, 0, &uuidText, a.userId.bytes.data(), a.username, a.tokenId,
           a.loginType, a.expiresAt, owned);
      res[idx[k]].http_status = v->httpStatus;
    }
    return 0;
  }

  // One window over the socket, reconnecting once when a connection that was open broke (a
  // restarted daemon, an idle timeout): verification is idempotent, so sending again is safe.
  int exchange(const tokend_request* reqs, tokend_result* res, const uint32_t* idx, size_t n) {
    for (int attempt = 0;; ++attempt) {
      bool fresh = false;
      if (!chan) {
        if (int rc = connect(); rc < 0) return rc;
        fresh = true;
      } else if (auto t = chan->setTimeout(timeoutMs); !t) {
        chan.reset();
        return fail(t.error());
      }
      const int rc = exchangeOnce(reqs, res, idx, n);
      if (rc == 0) return 0;
      // Whatever failed, the stream may hold answers we will not read: start afresh next time.
      chan.reset();
      if (fresh || attempt > 0 || !retryable(rc)) return rc;
    }
  }

  int verify(const tokend_request* reqs, size_t n, tokend_result* res) {
    pending.clear();
    for (size_t i = 0; i < n; ++i) {
      if (!fast(reqs[i], res[i])) pending.push_back(static_cast<uint32_t>(i));
    }
    size_t start = 0;
    while (start < pending.size()) {
      size_t end = start;
      size_t bytes = 0;
      while (end < pending.size() && end - start < kWindowRequests && bytes < kWindowBytes) {
        const tokend_request& r = reqs[pending[end]];
        bytes += daemon::kFrameHeaderSize + 8 + field(r.token).size() + field(r.permission).size() +
                 field(r.object).size() + field(r.owner).size();
        ++end;
      }
      if (int rc = exchange(reqs, res, pending.data() + start, end - start); rc < 0) return rc;
      start = end;
    }
    return 0;
  }
};

// Every entry point catches: no C++ exception may cross the C ABI (and the only ones the code
// below can meet are allocation failures).
#define TOKEND_GUARD(expr)          \
  try {                             \
    expr;                           \
  } catch (const std::bad_alloc&) { \
    return -ENOMEM;                 \
  } catch (...) {                   \
    return -EIO;                    \
  }

extern "C" {

TOKEND_API int tokend_open_ex(const char* socket_path, unsigned flags, tokend_client** out) {
  if (out == nullptr) return -EINVAL;
  *out = nullptr;
  if ((flags & ~TOKEND_OPEN_NO_SHM) != 0) return -EINVAL;
  const char* path = socket_path != nullptr ? socket_path : std::getenv("TOKEND_SOCKET");
  if (path == nullptr || *path == '\0') return -EINVAL;
  TOKEND_GUARD({
    auto c = std::make_unique<tokend_client>();
    c->path = path;
    c->wantShm = (flags & TOKEND_OPEN_NO_SHM) == 0;
    if (int rc = c->connect(); rc < 0) return rc;
    *out = c.release();
    return 0;
  })
}

TOKEND_API int tokend_open(const char* socket_path, tokend_client** out) {
  return tokend_open_ex(socket_path, 0, out);
}

TOKEND_API int tokend_verify(tokend_client* c, const char* token, const char* permission,
                             const char* object, const char* owner, tokend_result* out) {
  if (c == nullptr || out == nullptr) return -EINVAL;
  const tokend_request r{token, permission, object, owner};
  TOKEND_GUARD(return c->verify(&r, 1, out))
}

TOKEND_API int tokend_verify_batch(tokend_client* c, const tokend_request* requests, size_t count,
                                   tokend_result* results) {
  if (c == nullptr || count > TOKEND_BATCH_MAX) return -EINVAL;
  if (count == 0) return 0;
  if (requests == nullptr || results == nullptr) return -EINVAL;
  TOKEND_GUARD(return c->verify(requests, count, results))
}

TOKEND_API int tokend_set_fast_path(tokend_client* c, int enabled) {
  if (c == nullptr) return -EINVAL;
  c->wantShm = enabled != 0;
  // Map now when the connection is up but was opened without asking; an error here only means
  // the next call reconnects, which asks again.
  if (c->wantShm && !c->reader && c->chan) {
    TOKEND_GUARD(if (c->attach() < 0) c->chan.reset())
  }
  return 0;
}

TOKEND_API int tokend_shm_state(const tokend_client* c) {
  if (c == nullptr || !c->wantShm) return TOKEND_SHM_OFF;
  if (c->refused) return TOKEND_SHM_REFUSED;
  return c->fastUsable() ? TOKEND_SHM_MAPPED : TOKEND_SHM_UNAVAILABLE;
}

TOKEND_API int tokend_set_timeout(tokend_client* c, int milliseconds) {
  if (c == nullptr || milliseconds <= 0) return -EINVAL;
  c->timeoutMs = milliseconds;
  return 0;
}

TOKEND_API int tokend_flush(tokend_client* c, int timeout_ms) {
  if (c == nullptr || timeout_ms < 0) return -EINVAL;
  if (!c->monitor) return 0;
  return c->monitor->flush(timeout_ms);
}

TOKEND_API const char* tokend_daemon_version(const tokend_client* c) {
  return c == nullptr ? "" : c->daemonVersion.c_str();
}

TOKEND_API const char* tokend_version(void) {
  return TOKEND_VERSION_STRING;
}

TOKEND_API const char* tokend_last_error(const tokend_client* c) {
  return c == nullptr ? "" : c->lastError.c_str();
}

TOKEND_API void tokend_close(tokend_client* c) {
  if (c == nullptr) return;
  // Reports the queued uses, then joins; nothing here can throw but a failing allocation inside
  // the thread, which std::thread would turn into std::terminate anyway.
  if (c->monitor) c->monitor->stop();
  delete c;
}

}  // extern "C"
