// Fault-test support: filling the key database through the management API (the map-full and
// disk-full tests).
#pragma once

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

namespace tokend::test {

inline constexpr const char* kTokensPath = "/api/v2/users/me/keys/tokens";

// A token creation whose record is several KiB: 128 allow-list entries.
inline std::string bigToken(int n) {
  nlohmann::json allow = nlohmann::json::array();
  for (int i = 0; i < 128; ++i) {
    char id[37];
    std::snprintf(id, sizeof id, "%08x-0000-4000-8000-%012x", n, i);
    allow.push_back(std::string("workspace:") + id);
  }
  return nlohmann::json{{"token_name", "fill-" + std::to_string(n)},
                        {"allow_list", allow},
                        {"lifetime", 3600LL * 1000000000LL}}
      .dump();
}

struct Filled {
  std::vector<std::string> ids, keys;  // of the tokens created
  HttpReply refusal;                   // the first answer that was not 201 (status 0: none)
};

// Creates bigToken(0), bigToken(1), ... as `caller` until one is refused, at most `limit`.
inline Filled fillUntilRefused(const Daemon& d, const std::string& caller, int limit = 2000) {
  Filled f;
  for (int n = 0; n < limit; ++n) {
    HttpReply r = httpRequest(d.socket(), "POST", kTokensPath, caller, bigToken(n));
    if (r.status != 201) {
      f.refusal = r;
      break;
    }
    nlohmann::json j = nlohmann::json::parse(r.body);
    f.ids.push_back(j["id"]);
    f.keys.push_back(j["key"]);
  }
  return f;
}

}  // namespace tokend::test
