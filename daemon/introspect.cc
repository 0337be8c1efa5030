// POST /v1/introspect: RFC 7662 token introspection over the verifier.
#include "daemon/introspect.h"

#include <fmt/format.h>
#include <openssl/crypto.h>

#include <algorithm>

#include "base/scope_exit.h"
#include "verifier/scopes.h"
#include "verifier/token.h"

namespace tokend::daemon {

using verifier::Reason;

namespace {

constexpr std::string_view kStale =
    "this tokend's copy of PostgreSQL is older than --max-staleness: try again later";

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool startsWithWordIgnoreCase(std::string_view s, std::string_view word) {
  if (s.size() <= word.size() || (s[word.size()] != ' ' && s[word.size()] != '\t')) return false;
  for (size_t i = 0; i < word.size(); ++i)
    if (lower(s[i]) != lower(word[i])) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

int base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Standard base64 with padding (RFC 7617 uses RFC 4648 section 4); padding may be left off.
Result<std::string> base64Decode(std::string_view in) {
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  if (in.size() % 4 == 1) return makeError("malformed base64");
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = base64Value(c);
    if (v < 0) return makeError("malformed base64");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

void appendStringArray(std::string& out, const std::vector<std::string>& items) {
  out.push_back('[');
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out.push_back(',');
    appendJsonString(out, items[i]);
  }
  out.push_back(']');
}

void appendNumberField(std::string& out, std::string_view name, int64_t v) {
  out += fmt::format(",\"{}\":{}", name, v);
}

void appendStringField(std::string& out, std::string_view name, std::string_view v) {
  out += fmt::format(",\"{}\":", name);
  appendJsonString(out, v);
}

// An answer of this endpoint: JSON, never cached (RFC 7662 2.2 and 4).
void reply(std::string& out, int status, bool keepAlive, std::string_view json,
           std::string_view challenge = {}) {
  appendStatusLine(out, status);
  if (!challenge.empty()) appendHeader(out, "WWW-Authenticate", challenge);
  if (status == 405) appendHeader(out, "Allow", "POST");
  appendHeader(out, "Cache-Control", "no-store");
  appendHeader(out, "Pragma", "no-cache");
  appendBody(out, keepAlive, "application/json", json);
}

// RFC 6749 5.2's error shape.
std::string oauthError(std::string_view code, std::string_view description) {
  std::string j = "{\"error\":";
  appendJsonString(j, code);
  j += ",\"error_description\":";
  appendJsonString(j, description);
  j += '}';
  return j;
}

}  // namespace

Result<ClientCredentials> parseClientCredentials(std::string_view authorization,
                                                 DecodeBuffer& scratch) {
  ClientCredentials c;
  authorization = trim(authorization);
  if (authorization.empty()) return c;
  if (startsWithWordIgnoreCase(authorization, "Bearer")) {
    c.scheme = ClientCredentials::Scheme::Bearer;
    c.token = std::string(trim(authorization.substr(6)));
    return c;
  }
  if (!startsWithWordIgnoreCase(authorization, "Basic")) {
    c.scheme = ClientCredentials::Scheme::Other;
    return c;
  }
  c.scheme = ClientCredentials::Scheme::Basic;
  auto plain = base64Decode(trim(authorization.substr(5)));
  if (!plain) return makeError("the Basic credentials are not base64");
  ScopeExit wipe([&] { OPENSSL_cleanse(plain->data(), plain->size()); });
  const size_t colon = plain->find(':');
  if (colon == std::string::npos) return makeError("the Basic credentials have no ':'");
  std::string_view idPart = std::string_view(*plain).substr(0, colon);
  std::string_view secretPart = std::string_view(*plain).substr(colon + 1);
  auto id = percentDecode(idPart, scratch);
  if (!id) return makeError("the client id is badly encoded");
  std::string idText(*id);
  auto secret = percentDecode(secretPart, scratch);
  if (!secret) return makeError("the client secret is badly encoded");
  c.token = idText + "-" + std::string(*secret);
  OPENSSL_cleanse(idText.data(), idText.size());
  return c;
}

Result<IntrospectForm> parseIntrospectForm(const HttpRequest& r, DecodeBuffer& scratch) {
  std::string_view type = r.header("Content-Type");
  type = trim(type.substr(0, type.find(';')));
  std::string lowered(type);
  std::transform(lowered.begin(), lowered.end(), lowered.begin(), lower);
  if (lowered != "application/x-www-form-urlencoded")
    return makeError("the body must be application/x-www-form-urlencoded");
  IntrospectForm f;
  auto token = queryParam(r.body, "token", scratch);
  if (!token) return makeError("the token parameter is badly encoded");
  if (token->empty()) return makeError("the token parameter is missing");
  f.token = *token;
  auto hint = queryParam(r.body, "token_type_hint", scratch);
  if (hint) f.tokenTypeHint = *hint;
  return f;
}

std::string encodeIntrospection(const Introspection& i) {
  std::string o = "{\"active\":true,\"scope\":";
  std::string scope;
  for (size_t k = 0; k < i.scopes.size(); ++k) {
    if (k) scope.push_back(' ');
    scope += i.scopes[k];
  }
  appendJsonString(o, scope);
  appendStringField(o, "username", i.username);
  appendStringField(o, "sub", i.sub);
  appendStringField(o, "token_type", "Bearer");
  appendNumberField(o, "exp", i.exp);
  appendNumberField(o, "iat", i.iat);
  appendStringField(o, "jti", i.jti);
  appendStringField(o, "client_id", i.clientId);
  appendStringField(o, "login_type", i.loginType);
  o += ",\"allow_list\":";
  appendStringArray(o, i.allowList);
  o.push_back('}');
  return o;
}

std::optional<Reason> Introspector::handle(Service::Worker& w, const HttpRequest& r,
                                           DecodeBuffer& scratch, std::string& out) {
  const bool keep = r.keepAlive;
  if (r.method != "POST") {
    reply(out, 405, keep, oauthError("invalid_request", "introspection takes POST"));
    return std::nullopt;
  }
  // Both schemes are offered: a client that sent neither learns what it may send.
  constexpr std::string_view kChallenge = R"(Basic realm="tokend", Bearer realm="tokend")";
  auto creds = parseClientCredentials(r.header("Authorization"), scratch);
  if (!creds) {
    reply(out, 401, keep, oauthError("invalid_client", creds.error().message),
          R"(Basic realm="tokend")");
    return std::nullopt;
  }
  using Scheme = ClientCredentials::Scheme;
  if (creds->scheme == Scheme::None || creds->scheme == Scheme::Other || creds->token.empty()) {
    reply(out, 401, keep,
          oauthError("invalid_client",
                     "authenticate with your token: Authorization: Bearer <token>, or Basic with "
                     "its id and secret"),
          kChallenge);
    return std::nullopt;
  }
  const bool basic = creds->scheme == Scheme::Basic;
  VerifyAnswer caller;
  if (!service_.verify(w, VerifyQuery{creds->token, {}, {}, {}}, caller)) {
    OPENSSL_cleanse(creds->token.data(), creds->token.size());
    reply(out, 500, keep, oauthError("server_error", "the key database could not be read"));
    return std::nullopt;
  }
  OPENSSL_cleanse(creds->token.data(), creds->token.size());
  if (caller.reason == Reason::Unavailable) {
    reply(out, 503, keep, oauthError("temporarily_unavailable", kStale));
    return std::nullopt;
  }
  if (caller.reason != Reason::Ok) {
    reply(out, 401, keep,
          oauthError(
              basic ? "invalid_client" : "invalid_token",
              fmt::format("your token is not valid ({})", verifier::reasonName(caller.reason))),
          basic ? std::string_view(R"(Basic realm="tokend")")
                : std::string_view(R"(Bearer realm="tokend", error="invalid_token")"));
    return std::nullopt;
  }
  const std::string callerName(caller.username);
  auto callerUser = manager_.user(caller.userId.toString());
  const bool allowed = (callerUser && verifier::hasOwnerRole(callerUser->roles)) ||
                       std::find(users_.begin(), users_.end(), callerName) != users_.end();
  if (!allowed) {
    reply(out, 403, keep,
          oauthError("access_denied",
                     fmt::format("user \"{}\" may not introspect tokens: owners and the users "
                                 "named by --introspect-user may",
                                 callerName)),
          basic ? std::string_view() : R"(Bearer realm="tokend", error="insufficient_scope")");
    return std::nullopt;
  }

  auto form = parseIntrospectForm(r, scratch);
  if (!form) {
    reply(out, 400, keep, oauthError("invalid_request", form.error().message));
    return std::nullopt;
  }
  VerifyAnswer a;
  if (!service_.verify(w, VerifyQuery{form->token, {}, {}, {}}, a)) {
    reply(out, 500, keep, oauthError("server_error", "the key database could not be read"));
    return std::nullopt;
  }
  if (a.reason == Reason::Unavailable) {
    reply(out, 503, keep, oauthError("temporarily_unavailable", kStale));
    return a.reason;
  }
  if (a.reason != Reason::Ok) {
    reply(out, 200, keep, kInactive);
    return a.reason;
  }
  Introspection i;
  i.username = std::string(a.username);
  i.sub = a.userId.toString();
  i.exp = a.expiresAt;
  i.jti = std::string(a.tokenId);
  i.loginType = std::string(loginTypeWord(a.loginType));
  // The record for what the verdict does not carry. Gone since the verdict (deleted in between):
  // not active, as a verification now would say.
  auto t = manager_.findToken(i.jti, a.userId);
  if (!t) {
    reply(out, 200, keep, kInactive);
    return Reason::Unknown;
  }
  i.scopes = t->scopes;
  i.allowList = t->allowList;
  i.iat = t->createdAt;
  i.clientId = t->name.empty() ? i.jti : t->name;
  reply(out, 200, keep, encodeIntrospection(i));
  return Reason::Ok;
}

}  // namespace tokend::daemon
