// libFuzzer target: the LMDB record decoders (users and tokens as stored in the key database, which
// a corrupt, truncated or hand-edited file can make arbitrary), and compiling what they accept
// into what the cache and the decision use.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_support.h"
#include "verifier/records.h"
#include "verifier/verify.h"

using namespace tokend::verifier;
using tokend::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  static CompiledToken compiled;

  auto user = decodeUser(in);
  if (user) {
    // The encoding is canonical: what decodes re-encodes to the same bytes.
    require(checkEncodable(*user).has_value());
    require(encodeUser(*user) == in);
  } else {
    require(user.error().code == -EBADMSG && !user.error().message.empty());
  }

  auto token = decodeToken(in);
  if (!token) {
    require(token.error().code == -EBADMSG && !token.error().message.empty());
    return 0;
  }
  require(checkEncodable(*token).has_value());
  require(encodeToken(*token) == in);

  // Compile it as verification would, with a user that matches (and one that does not).
  UserRecord owner;
  owner.id = token->userId;
  owner.username = "fuzz";
  owner.roles = {"owner"};
  auto c = compileToken(*token, owner, compiled);
  if (c) {
    require(isTokenId(compiled.idView()) && compiled.idView() == token->id);
    require(compiled.allowCount >= 1 && compiled.allowCount <= kMaxAllowEntries);
    require(compiled.grant.scopes.contains(compiled.grant.site));
  } else {
    require(c.error().code == -EBADMSG);
  }
  UserRecord other = owner;
  other.id.bytes[0] ^= 1;
  require(!compileToken(*token, other, compiled));
  return 0;
}
