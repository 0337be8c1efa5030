// Micro-benchmarks of the verifier: parsing, SHA-256, scopes, the decision, and verify() over LMDB.
//
// BM_VerifyLmdb and BM_LmdbGetPlusSha share one key database of TOKEND_BENCH_TOKENS tokens
// (default 1000000), built once per run in a temp dir and removed at exit, and one sequence of
// random token ids (fixed seed), so the ratio verify / (get + sha) compares like with like.
#include <benchmark/benchmark.h>
#include <lmdb.h>
#include <openssl/sha.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include "verifier/verify.h"

using namespace tokend::verifier;
using tokend::Uuid;

namespace {

constexpr int64_t kNow = 1'800'000'000;
constexpr uint64_t kSeed = 0x746f6b656e64;  // "tokend": fixed, so runs draw the same ids
constexpr size_t kDefaultTokens = 1'000'000;
constexpr size_t kUsers = 1024;
constexpr size_t kTokensPerTxn = 50'000;
constexpr size_t kOrder = size_t{1} << 20;  // random picks, walked in turn
constexpr size_t kHotTokens = 64;           // a working set that stays in the CPU caches
constexpr char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
// The object every request names; tokens with an exact allow list name it too, so every
// verification in the database benchmarks ends in `ok` and takes the whole path.
constexpr char kObject[] = "aaaaaaaa-0000-4000-8000-000000000001";

// Typical scope lists, as tokenctl stores them (normalised: sorted, aliases resolved).
const std::vector<std::string> kScopeLists[] = {
    {"workspace:read"},
    {"coder:workspaces.access", "template:*"},
    {"coder:all"},
};

[[noreturn]] void die(const char* what, const tokend::Error& e) {
  std::fprintf(stderr, "Failed to %s: %s\n", what, e.message.c_str());
  std::exit(1);
}

template <class T>
T must(tokend::Result<T> r, const char* what) {
  if (!r) die(what, r.error());
  return std::move(*r);
}

void must(tokend::Result<void> r, const char* what) {
  if (!r) die(what, r.error());
}

std::string alnum(std::mt19937_64& rng, size_t n) {
  std::string s(n, '0');
  for (char& c : s) c = kAlphabet[rng() % 62];
  return s;
}

Uuid uuid(std::mt19937_64& rng) {
  Uuid u;
  for (size_t i = 0; i < u.bytes.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(u.bytes.data() + i, &v, 8);
  }
  return u;
}

std::string text(const std::vector<std::string>& list) {
  std::string s;
  for (const auto& item : list) s += (s.empty() ? "" : ",") + item;
  return s;
}

// ---- Pure pieces ------------------------------------------------------------------------------

const std::string kToken = "Ab3dE6gH9k-0123456789abcdefghijKLMN";

void BM_TokenParse(benchmark::State& state) {
  std::string_view text = kToken;
  for (auto _ : state) {
    benchmark::DoNotOptimize(text);
    auto parsed = parseToken(text);
    benchmark::DoNotOptimize(parsed);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Sha256Reused(benchmark::State& state) {
  Sha256 sha;
  std::string_view secret = std::string_view(kToken).substr(kTokenIdLength + 1);
  for (auto _ : state) {
    benchmark::DoNotOptimize(secret);
    Digest d = sha.digest(secret);
    benchmark::DoNotOptimize(d);
  }
  state.SetItemsProcessed(state.iterations());
}

// OpenSSL 3's one-shot SHA256() looks the algorithm up and allocates a context on every call:
// here only to show what the reused context saves. Not for the hot path.
void BM_Sha256OneShot(benchmark::State& state) {
  std::string_view secret = std::string_view(kToken).substr(kTokenIdLength + 1);
  for (auto _ : state) {
    benchmark::DoNotOptimize(secret);
    Digest d;
    SHA256(reinterpret_cast<const unsigned char*>(secret.data()), secret.size(), d.data());
    benchmark::DoNotOptimize(d);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_ScopeCompile(benchmark::State& state) {
  const auto& list = kScopeLists[state.range(0)];
  for (auto _ : state) {
    auto perms = compileScopes(list);
    benchmark::DoNotOptimize(perms);
  }
  state.SetLabel(text(list));
  state.SetItemsProcessed(state.iterations());
}

// Decoding the records verify() reads, as the key database stores them: the token (range(0) 1
// for an allow list naming objects, 0 for "*:*") and its user. Every string and list is copied
// out of the map into a fresh TokenRecord or UserRecord.
void BM_DecodeToken(benchmark::State& state) {
  Sha256 sha;
  TokenRecord t;
  t.id = "Ab3dE6gH9k";
  t.secretHash = sha.digest("0123456789abcdefghijKL");
  t.userId = *Uuid::parse("11111111-2222-4333-8444-555555555555");
  t.name = "bench-123456";
  t.scopes = kScopeLists[1];
  t.allowList = state.range(0)
                    ? std::vector<std::string>{"template:*", std::string("workspace:") + kObject}
                    : std::vector<std::string>{"*:*"};
  t.createdAt = t.updatedAt = kNow - 3600;
  t.lifetimeSeconds = 168 * 3600;
  t.expiresAt = t.createdAt + t.lifetimeSeconds;
  const std::string bytes = encodeToken(t);
  for (auto _ : state) {
    auto r = decodeToken(bytes);
    benchmark::DoNotOptimize(r);
  }
  state.SetLabel(std::to_string(bytes.size()) + " bytes");
  state.SetItemsProcessed(state.iterations());
}

void BM_DecodeUser(benchmark::State& state) {
  UserRecord u;
  u.id = *Uuid::parse("11111111-2222-4333-8444-555555555555");
  u.username = "bench-user-123";
  u.roles = {"template-admin"};
  const std::string bytes = encodeUser(u);
  for (auto _ : state) {
    auto r = decodeUser(bytes);
    benchmark::DoNotOptimize(r);
  }
  state.SetLabel(std::to_string(bytes.size()) + " bytes");
  state.SetItemsProcessed(state.iterations());
}

// Compiled facts of one token and a request it passes: workspace:read on kObject, owned by the
// token's user. With range(0) allow-list entries: 1 is "*:*"; more are exact workspace entries
// with the requested one last, the longest scan.
struct Prepared {
  Sha256 sha;
  Digest hash = sha.digest(std::string_view(kToken).substr(kTokenIdLength + 1));
  Uuid user = *Uuid::parse("11111111-2222-4333-8444-555555555555");
  Grant grant;
  std::vector<AllowEntry> allow;
  Query query;

  explicit Prepared(int64_t allowCount) {
    grant = compileGrant(must(compileScopes(kScopeLists[1]), "compile scopes"), {});
    std::mt19937_64 rng(kSeed);
    if (allowCount <= 1) allow.push_back(AllowEntry{});
    for (int64_t i = 1; i < allowCount; ++i) {
      auto entry = i + 1 == allowCount ? std::string("workspace:") + kObject
                                       : "workspace:" + uuid(rng).toString();
      allow.push_back(must(parseAllowEntry(entry), "parse allow entry"));
    }
    query = parseQuery("workspace:read", std::string("workspace:") + kObject, user.toString());
    if (query.bad || decide(facts(), hash, query, kNow) != Reason::Ok) {
      std::fprintf(stderr, "Failed to prepare facts: the request is not allowed\n");
      std::exit(1);
    }
  }
  TokenFacts facts() const {
    return TokenFacts{hash.data(), user, kNow + 3600, true, &grant, allow};
  }
};

// The permission part of decide(): scope bit, allow-list match, role bits.
void BM_PermissionCheck(benchmark::State& state) {
  Prepared p(state.range(0));
  const TokenFacts facts = p.facts();
  Query q = p.query;
  for (auto _ : state) {
    benchmark::DoNotOptimize(q);
    bool ok = facts.grant->scopes.test(q.permission) &&
              allowListAdmits(facts.allow, catalog::resourceOf(q.permission),
                              q.hasObject ? &q.object : nullptr) &&
              (facts.grant->site.test(q.permission) ||
               (facts.grant->owned.test(q.permission) && q.hasOwner && q.owner == facts.userId));
    benchmark::DoNotOptimize(ok);
  }
  state.SetItemsProcessed(state.iterations());
}

// The whole decision: constant-time digest compare, expiry, status, then the permission part.
void BM_Decide(benchmark::State& state) {
  Prepared p(state.range(0));
  const TokenFacts facts = p.facts();
  Query q = p.query;
  for (auto _ : state) {
    benchmark::DoNotOptimize(q);
    Reason r = decide(facts, p.hash, q, kNow);
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}

// ---- The key database -------------------------------------------------------------------------

// Removes the database directory at exit; the KeyDb and its Reader go first.
struct Database {
  std::string dir;
  std::unique_ptr<KeyDb> db;
  std::unique_ptr<Reader> reader;
  MDB_dbi tokens = 0;
  size_t count = 0;
  std::vector<char> texts;      // count tokens of kTokenLength characters, back to back
  std::vector<Uuid> users;      // token i belongs to users[i % kUsers]
  std::vector<uint32_t> order;  // kOrder random token indices
  std::vector<uint32_t> hot;    // kOrder indices drawn from kHotTokens tokens

  ~Database() {
    reader.reset();
    db.reset();
    if (!dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }
  std::string_view token(size_t i) const { return {texts.data() + i * kTokenLength, kTokenLength}; }
};

size_t tokenCount() {
  const char* env = std::getenv("TOKEND_BENCH_TOKENS");
  if (env == nullptr || *env == '\0') return kDefaultTokens;
  char* end = nullptr;
  unsigned long long n = std::strtoull(env, &end, 10);
  if (*end != '\0' || n == 0 || n > UINT32_MAX) {
    std::fprintf(stderr, "Failed to read TOKEND_BENCH_TOKENS=\"%s\": want a count of tokens\n",
                 env);
    std::exit(1);
  }
  return n;
}

std::unique_ptr<Database> buildDatabase() {
  auto d = std::make_unique<Database>();
  d->count = tokenCount();
  auto started = std::chrono::steady_clock::now();

  std::error_code ec;
  auto tmp = std::filesystem::temp_directory_path(ec);
  std::string pattern =
      ((ec ? std::filesystem::path("/tmp") : tmp) / "tokend-bench-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) {
    std::perror("Failed to create the benchmark directory");
    std::exit(1);
  }
  d->dir = pattern;
  KeyDbOptions options;
  // Room for every record at once (about 800 bytes a token with its indexes, in pages left half
  // full by random inserts), so update() never grows the map and reruns a batch; the file is
  // sparse.
  options.initialMapSize = (size_t{64} << 20) + d->count * 2048;
  d->db = must(KeyDb::open(d->dir + "/db", options), "open the key database");

  std::mt19937_64 rng(kSeed);
  std::vector<UserRecord> users(kUsers);
  for (size_t u = 0; u < kUsers; ++u) {
    users[u].id = uuid(rng);
    users[u].username = "bench-user-" + std::to_string(u);
    if (u % 8 == 0) users[u].roles = {"template-admin"};
    users[u].createdAt = users[u].updatedAt = kNow - 86400;
    d->users.push_back(users[u].id);
  }
  must(d->db->update([&](Writer& w) -> tokend::Result<void> {
    for (const auto& u : users) {
      if (auto r = w.putUser(u); !r) return r;
    }
    return {};
  }),
       "write users");

  // Ids must be distinct: a repeat would replace a token whose text the benchmark still presents.
  std::unordered_set<std::string> seen;
  seen.reserve(d->count);
  d->texts.resize(d->count * kTokenLength);
  for (size_t i = 0; i < d->count; ++i) {
    std::string id;
    do id = alnum(rng, kTokenIdLength);
    while (!seen.insert(id).second);
    std::string t = id + "-" + alnum(rng, kSecretLength);
    std::memcpy(d->texts.data() + i * kTokenLength, t.data(), kTokenLength);
  }
  seen = {};

  const std::vector<std::string> exactAllow = {"template:*", std::string("workspace:") + kObject};
  Sha256 sha;
  for (size_t first = 0; first < d->count; first += kTokensPerTxn) {
    size_t last = std::min(d->count, first + kTokensPerTxn);
    must(d->db->update([&](Writer& w) -> tokend::Result<void> {
      TokenRecord t;
      for (size_t i = first; i < last; ++i) {
        auto parsed = *parseToken(d->token(i));
        t.id.assign(parsed.id);
        t.secretHash = sha.digest(parsed.secret);
        t.userId = d->users[i % kUsers];
        t.loginType = LoginType::Token;
        t.name = "bench-" + std::to_string(i);
        t.scopes = kScopeLists[i % std::size(kScopeLists)];
        // One token in four names objects; the rest may touch anything, as most tokens do.
        t.allowList = i % 4 == 3 ? exactAllow : std::vector<std::string>{"*:*"};
        t.createdAt = t.updatedAt = kNow - 3600;
        t.lifetimeSeconds = 168 * 3600;
        t.expiresAt = t.createdAt + t.lifetimeSeconds;
        if (auto r = w.putToken(t); !r) return r;
      }
      return {};
    }),
         "write tokens");
  }

  d->order.resize(kOrder);
  d->hot.resize(kOrder);
  for (size_t k = 0; k < kOrder; ++k) {
    d->order[k] = static_cast<uint32_t>(rng() % d->count);
    d->hot[k] = d->order[k % kHotTokens];
  }

  d->reader = must(d->db->reader(), "take a reader");
  must(d->reader->begin(), "begin a read transaction");
  // The handle KeyDb opened at startup; a named database opened again yields the same handle.
  if (int rc = mdb_dbi_open(d->reader->raw(), "tokens", 0, &d->tokens)) {
    std::fprintf(stderr, "Failed to open the tokens database: %s\n", mdb_strerror(rc));
    std::exit(1);
  }
  // Touch every token page once: the first read of a page of the map faults it in, and those
  // faults would otherwise land on whichever benchmark happens to run first.
  MDB_cursor* cursor = nullptr;
  if (int rc = mdb_cursor_open(d->reader->raw(), d->tokens, &cursor)) {
    std::fprintf(stderr, "Failed to open a cursor: %s\n", mdb_strerror(rc));
    std::exit(1);
  }
  MDB_val key, value;
  size_t records = 0;
  for (int rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)) {
    records += static_cast<const char*>(value.mv_data)[0] != 0;
  }
  benchmark::DoNotOptimize(records);
  mdb_cursor_close(cursor);
  d->reader->end();

  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  auto size = std::filesystem::file_size(d->dir + "/db/data.mdb", ec);
  std::fprintf(stderr, "Built a key database of %zu tokens (%.0f MiB) in %s in %.1f s\n", d->count,
               ec ? 0.0 : static_cast<double>(size) / (1 << 20), d->dir.c_str(), seconds);
  return d;
}

// Built on first use, so benchmarks filtered to the pure pieces do not pay for it.
Database& database() {
  static std::unique_ptr<Database> d = buildDatabase();
  return *d;
}

const std::vector<uint32_t>& picks(const Database& d, const benchmark::State& state) {
  return state.range(0) ? d.hot : d.order;
}

// The daemon's LMDB path: Reader renewed, verify() (read, decode and compile the token and its
// user, hash the secret, decide), Reader reset.
void BM_VerifyLmdb(benchmark::State& state) {
  Database& d = database();
  const auto& order = picks(d, state);
  Sha256 sha;
  auto scratch = std::make_unique<CompiledToken>();
  Query query = parseQuery("workspace:read", std::string("workspace:") + kObject, "");
  query.hasOwner = true;
  size_t k = 0, ok = 0;
  for (auto _ : state) {
    uint32_t i = order[k++ & (kOrder - 1)];
    query.owner = d.users[i % kUsers];
    if (auto r = d.reader->begin(); !r) {
      state.SkipWithError(r.error().message.c_str());
      break;
    }
    auto v = verify(*d.reader, sha, d.token(i), query, kNow, *scratch);
    d.reader->end();
    if (!v) {
      state.SkipWithError(v.error().message.c_str());
      break;
    }
    ok += v->allowed();
    benchmark::DoNotOptimize(*v);
  }
  state.counters["ok%"] = 100.0 * static_cast<double>(ok) / static_cast<double>(state.iterations());
  state.SetLabel(std::to_string(d.count) + " tokens");
  state.SetItemsProcessed(state.iterations());
}

// The floor the issue compares verify() with: one mdb_get of the same token ids plus one SHA-256
// of their secrets. range(1) also renews and resets the Reader per call, as verify() is measured.
void BM_LmdbGetPlusSha(benchmark::State& state) {
  Database& d = database();
  const auto& order = picks(d, state);
  const bool perCall = state.range(1) != 0;
  Sha256 sha;
  size_t k = 0, found = 0;
  if (!perCall) must(d.reader->begin(), "begin a read transaction");
  for (auto _ : state) {
    uint32_t i = order[k++ & (kOrder - 1)];
    std::string_view t = d.token(i);
    if (perCall) {
      if (auto r = d.reader->begin(); !r) {
        state.SkipWithError(r.error().message.c_str());
        break;
      }
    }
    MDB_val key{kTokenIdLength, const_cast<char*>(t.data())}, value;
    int rc = mdb_get(d.reader->raw(), d.tokens, &key, &value);
    Digest h = sha.digest(t.substr(kTokenIdLength + 1));
    if (perCall) d.reader->end();
    found += rc == 0;
    benchmark::DoNotOptimize(value);
    benchmark::DoNotOptimize(h);
  }
  if (!perCall) d.reader->end();
  state.counters["found%"] =
      100.0 * static_cast<double>(found) / static_cast<double>(state.iterations());
  state.SetLabel(std::to_string(d.count) + " tokens");
  state.SetItemsProcessed(state.iterations());
}

}  // namespace

BENCHMARK(BM_TokenParse);
BENCHMARK(BM_Sha256Reused);
BENCHMARK(BM_Sha256OneShot);
BENCHMARK(BM_ScopeCompile)->ArgName("list")->DenseRange(0, std::size(kScopeLists) - 1);
BENCHMARK(BM_DecodeToken)->ArgName("exact_allow")->Arg(0)->Arg(1);
BENCHMARK(BM_DecodeUser);
BENCHMARK(BM_PermissionCheck)->ArgName("allow")->Arg(1)->Arg(8);
BENCHMARK(BM_Decide)->ArgName("allow")->Arg(1)->Arg(8);
BENCHMARK(BM_VerifyLmdb)->ArgName("hot")->Arg(0)->Arg(1);
BENCHMARK(BM_LmdbGetPlusSha)
    ->ArgNames({"hot", "renew"})
    ->Args({0, 0})
    ->Args({0, 1})
    ->Args({1, 0})
    ->Args({1, 1});

BENCHMARK_MAIN();
