// tokenload's token sets: creation in the key database and the token file.
#include "tools/load_tokens.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <fstream>

#include "base/clock.h"
#include "base/unique_fd.h"
#include "verifier/manage.h"
#include "verifier/scopes.h"
#include "verifier/token.h"
#include "verifier/verify.h"

namespace tokend::tools {
namespace {

using namespace tokend::verifier;

bool looksLikeToken(std::string_view s) {
  return parseToken(s).has_value();
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

}  // namespace

Result<TokenSet> readTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Error::fromErrno(errno, "Failed to open " + path);
  TokenSet set;
  std::string line;
  size_t lineNo = 0;
  while (std::getline(in, line)) {
    ++lineNo;
    std::string_view l = trim(line);
    if (l.empty() || l.front() == '#') continue;
    bool expired = false;
    if (l.substr(0, 8) == "expired ") {
      expired = true;
      l = trim(l.substr(8));
    }
    if (!looksLikeToken(l)) {
      return makeError(
          fmt::format("{}:{}: not a token (want <10 alnum>-<22 alnum>)", path, lineNo));
    }
    (expired ? set.expired : set.valid).emplace_back(l);
  }
  if (in.bad()) return Error::fromErrno(errno, "Failed to read " + path);
  return set;
}

Result<void> writeTokenFile(const std::string& path, const TokenSet& set,
                            const std::string& header) {
  std::string text;
  text.reserve((set.valid.size() + set.expired.size()) * 42 + header.size() + 64);
  text += header;
  for (const auto& t : set.valid) text += t + "\n";
  for (const auto& t : set.expired) text += "expired " + t + "\n";
  std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return Error::fromErrno(errno, "Failed to create " + tmp);
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd.get(), text.data() + off, text.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::fromErrno(errno, "Failed to write " + tmp);
    }
    off += static_cast<size_t>(n);
  }
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return Error::fromErrno(errno, "Failed to rename " + tmp + " to " + path);
  }
  return {};
}

Result<CreatedTokens> createTokens(const CreateTokensOptions& o) {
  auto scopes = normalizeScopes(splitList(o.scopes), false);
  if (!scopes) return scopes.error();
  auto db = KeyDb::open(o.dbDir);
  if (!db) return db.error();
  Manager manager(**db, LifetimeConfig{});
  int64_t now = clockNow();

  // Lower-case: usernames are [a-z0-9][a-z0-9-_]*.
  std::string suffix = randomAlnum(8);
  for (char& c : suffix) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  CreatedTokens out;
  out.username = "tokenload-" + suffix;
  auto user = manager.createUser(out.username, {"owner"}, now);
  if (!user) return user.error();

  // Manager::createToken is one transaction per token (a commit and an fsync each); 100k tokens
  // that way take minutes. Records written in batches through KeyDb::update take seconds, with
  // the same records and indexes Writer::putToken keeps for every writer.
  Sha256 sha;
  size_t total = o.valid + o.expired;
  std::vector<TokenRecord> batch;
  std::vector<std::string> keys;
  for (size_t done = 0; done < total;) {
    size_t n = std::min(o.batch, total - done);
    batch.clear();
    keys.clear();
    // Minted before update(): update() reruns its function after growing the map, so the function
    // must not draw new tokens.
    for (size_t i = 0; i < n; ++i) {
      size_t k = done + i;
      bool expired = k >= o.valid;
      NewToken nt = mintToken();
      TokenRecord t;
      t.id = nt.id;
      t.secretHash = sha.digest(nt.secret);
      t.userId = user->id;
      t.loginType = LoginType::Token;
      t.name = fmt::format("load-{}", k);
      t.scopes = *scopes;
      t.allowList = {"*:*"};
      t.createdAt = t.updatedAt = now;
      t.lifetimeSeconds = o.lifetimeSeconds;
      t.expiresAt = expired ? now - 1 : now + o.lifetimeSeconds;
      t.lastUsed = 0;
      batch.push_back(std::move(t));
      keys.push_back(nt.text());
    }
    auto r = (*db)->update([&](Writer& w) -> Result<void> {
      for (const TokenRecord& t : batch)
        if (auto p = w.putToken(t); !p) return p.error();
      return {};
    });
    if (!r) return r.error();
    for (size_t i = 0; i < n; ++i)
      (done + i < o.valid ? out.set.valid : out.set.expired).push_back(std::move(keys[i]));
    done += n;
  }
  return out;
}

Result<bool> tokensFit(const std::string& dbDir, const TokenSet& set, const std::string& permission,
                       const std::string& deniedPermission, std::string& why) {
  auto db = KeyDb::open(dbDir);
  if (!db) return db.error();
  auto reader = (*db)->reader();
  if (!reader) return reader.error();
  Sha256 sha;
  auto scratch = std::make_unique<CompiledToken>();
  struct Probe {
    const std::string* token;
    const std::string* permission;
    Reason want;
  };
  std::vector<Probe> probes;
  if (!set.valid.empty()) {
    probes.push_back({&set.valid.front(), &permission, Reason::Ok});
    probes.push_back({&set.valid.back(), &permission, Reason::Ok});
    if (!deniedPermission.empty())
      probes.push_back({&set.valid.front(), &deniedPermission, Reason::Scope});
  }
  if (!set.expired.empty()) probes.push_back({&set.expired.front(), &permission, Reason::Expired});
  int64_t now = clockNow();
  for (const Probe& p : probes) {
    if (auto b = (*reader)->begin(); !b) return b.error();
    auto v = verify(**reader, sha, *p.token, parseQuery(*p.permission, "", ""), now, *scratch);
    (*reader)->end();
    if (!v) return v.error();
    if (v->reason != p.want) {
      why = fmt::format("token {}... for \"{}\" is {} in the database, not {}",
                        p.token->substr(0, kTokenIdLength), *p.permission, reasonName(v->reason),
                        reasonName(p.want));
      return false;
    }
  }
  return true;
}

}  // namespace tokend::tools
