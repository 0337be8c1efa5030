// OAuth 2.0 Token Introspection (RFC 7662) at POST /v1/introspect (SPEC 7), for gateways that
// speak it (Apache's mod_oauth2, Kong, APISIX, oauth2-proxy...).
//
// The caller authenticates with a valid token of its own, as "Authorization: Bearer <token>" or
// HTTP Basic with the token's id and secret as client id and client secret (RFC 6749 2.3.1:
// each form-urlencoded, then base64). It must belong to an owner or to a user named by
// --introspect-user. The form body's `token` is then verified as /v1/verify would without a
// permission (its use counts, like any verification); any verdict but ok is {"active":false},
// nothing more, so the endpoint tells a caller nothing about why a token is not valid.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "daemon/http.h"
#include "daemon/service.h"
#include "verifier/manage.h"

namespace tokend::daemon {

// --- parse and encode (no verification) ----------------------------------------------------------

// The caller's credentials from the Authorization header.
struct ClientCredentials {
  enum class Scheme : uint8_t { None, Bearer, Basic, Other } scheme = Scheme::None;
  std::string token;  // Bearer: the token; Basic: "<client id>-<client secret>"
};
// Errors: a Basic value that is not base64 of "id:secret" or whose parts are badly encoded.
Result<ClientCredentials> parseClientCredentials(std::string_view authorization,
                                                 DecodeBuffer& scratch);

// The form body (application/x-www-form-urlencoded). `token` is percent-decoded (and '+' is a
// space); token_type_hint is read and ignored (RFC 7662 2.1 lets the server ignore it).
struct IntrospectForm {
  std::string_view token;
  std::string_view tokenTypeHint;
};
// Errors: not a form (by Content-Type), no token, bad percent-encoding.
Result<IntrospectForm> parseIntrospectForm(const HttpRequest& request, DecodeBuffer& scratch);

// What a valid token's answer holds (RFC 7662 2.2 and tokend's two extras).
struct Introspection {
  std::vector<std::string> scopes;
  std::string username;
  std::string sub;  // user id
  int64_t exp = 0;
  int64_t iat = 0;
  std::string jti;  // token id
  std::string clientId;
  std::string loginType;
  std::vector<std::string> allowList;
};
// {"active":true,"scope":"a b",...}; {"active":false} is kInactive.
std::string encodeIntrospection(const Introspection& i);
inline constexpr std::string_view kInactive = R"({"active":false})";

// --- the endpoint --------------------------------------------------------------------------------

class Introspector {
 public:
  Introspector(Service& service, verifier::Manager& manager, std::vector<std::string> users)
      : service_(service), manager_(manager), users_(std::move(users)) {}

  // Answers one request to /v1/introspect (any method: others than POST get 405). Returns the
  // verdict on the introspected token when it was verified (for the request metrics).
  std::optional<verifier::Reason> handle(Service::Worker& worker, const HttpRequest& request,
                                         DecodeBuffer& scratch, std::string& out);

 private:
  Service& service_;
  verifier::Manager& manager_;
  std::vector<std::string> users_;
};

}  // namespace tokend::daemon
