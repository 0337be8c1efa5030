// A small, strict HTTP/1.1 request parser and response writer, for gateways (SPEC 7, 8).
//
// Parsing is stateless: parseHttpRequest() is given every unconsumed byte of the connection and
// either finds one whole request at its start or says why not. It never reads past in.size() and
// never allocates; the request's views point into `in`.
//
// What is accepted (RFC 9112, strictly, with the choices below written into docs/protocol.md):
//   - request line `method SP origin-form SP HTTP/1.0|HTTP/1.1`, single spaces; the target must
//     start with '/' and hold only visible ASCII; other HTTP/x.y versions get 505;
//   - lines end in CRLF or a bare LF (RFC 9112 2.2 allows recognising LF); a CR not followed by LF
//     is refused (400); empty lines before the request line are skipped;
//   - header fields `name ":" OWS value OWS`, name a token, value without control characters;
//     obs-fold (a line starting with a blank) is refused (400); at most kMaxHttpHeaders fields;
//   - a body only by Content-Length (digits only, once); Transfer-Encoding is not implemented (501,
//     or 400 together with Content-Length, the request-smuggling shape);
//   - keep-alive by default in HTTP/1.1, close by default in 1.0; the Connection header's "close"
//     and "keep-alive" options override;
//   - Host is neither required nor checked: the socket is local and serves one site.
// Every Error answer is final: the connection is closed after the response (the framing of what
// follows cannot be trusted).
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "base/result.h"
#include "daemon/query.h"

namespace tokend::daemon {

inline constexpr size_t kMaxHttpHead = 8192;   // request line + header fields + empty line
inline constexpr size_t kMaxHttpBody = 65536;  // Content-Length
inline constexpr size_t kMaxHttpHeaders = 64;  // header fields per request

struct HttpHeader {
  std::string_view name;
  std::string_view value;  // without surrounding blanks
};

struct HttpRequest {
  std::string_view method;  // as sent; methods are case-sensitive
  std::string_view target;  // path and query as sent
  std::string_view path;    // target before '?', not decoded
  std::string_view query;   // target after the first '?', not decoded; empty when none
  int minorVersion = 1;     // HTTP/1.<minorVersion>
  bool keepAlive = true;    // whether the connection stays open after the answer
  std::array<HttpHeader, kMaxHttpHeaders> headers{};
  size_t headerCount = 0;
  std::string_view body;

  // The first field with this name (ASCII case-insensitive), or an empty view.
  std::string_view header(std::string_view name) const;
  std::span<const HttpHeader> headerFields() const { return {headers.data(), headerCount}; }
};

struct HttpParse {
  ParseStatus status = ParseStatus::NeedMore;
  size_t consumed = 0;            // Complete: bytes of the request, head and body
  int errorStatus = 0;            // Error: 400, 413, 414, 431, 501 or 505
  std::string_view errorMessage;  // Error: what was wrong, static storage
};

// Parses the request at the start of `in` into `request` (which is overwritten, also on NeedMore
// and Error). Call again on in.substr(consumed) for pipelined requests.
HttpParse parseHttpRequest(std::string_view in, HttpRequest& request);

// Space for percent-decoded values, owned by the caller (one per connection) and reset per
// request. kMaxHttpHead bytes are enough to decode every query parameter of a request once.
class DecodeBuffer {
 public:
  void reset() { used_ = 0; }
  size_t used() const { return used_; }

 private:
  friend Result<std::string_view> percentDecode(std::string_view, DecodeBuffer&);
  std::array<char, kMaxHttpHead> storage_;
  size_t used_ = 0;
};

// Decodes %XX escapes and '+' as a space (application/x-www-form-urlencoded, what browsers and
// curl --data-urlencode produce). Input without '%' or '+' is returned as is, using no space.
// The view stays valid until scratch.reset(). Errors: a '%' not followed by two hex digits; the
// buffer is full.
Result<std::string_view> percentDecode(std::string_view encoded, DecodeBuffer& scratch);

// The first parameter `name` of a query string ("a=1&b=2"; names compared exactly, undecoded),
// percent-decoded. Empty when absent or empty. Errors as percentDecode().
Result<std::string_view> queryParam(std::string_view query, std::string_view name,
                                    DecodeBuffer& scratch);

// The first cookie `name` over all Cookie header fields, without surrounding double quotes; not
// decoded (cookie values are opaque, RFC 6265). Empty when absent.
std::string_view cookieValue(const HttpRequest& request, std::string_view name);

// The token, from the first non-empty of (SPEC 7): cookie coder_session_token, query
// coder_session_token, header Coder-Session-Token, header "Authorization: Bearer <token>" (scheme
// case-insensitive), query access_token. Empty when none. Errors: bad percent-encoding of a query
// value that had to be looked at.
Result<std::string_view> extractToken(const HttpRequest& request, DecodeBuffer& scratch);

// Whether `path` is the verify endpoint: /v1/verify or any path below it (/v1/verify/...), which
// answer on every method (SPEC 7: Envoy's ext_authz sends the client's method and appends the
// client's path to its path_prefix).
bool isVerifyPath(std::string_view path);

// The whole query of a verify request: the token as extractToken(); perm, object and owner from
// the headers X-Tokend-Permission, X-Tokend-Object, X-Tokend-Owner, which the gateway sets; a
// header that is absent or empty falls back to the query parameter of that name, and only on
// /v1/verify itself: below it (/v1/verify/...) the query is the client's own (Envoy appends the
// client's path and query), so it may carry a token but never a permission, object or owner.
Result<VerifyQuery> extractVerifyQuery(const HttpRequest& request, DecodeBuffer& scratch);

// The client's request a forward-auth gateway asks about, for route rules: X-Forwarded-Method and
// the path of X-Forwarded-Uri (Traefik's forwardAuth; the query cut off) when X-Forwarded-Uri is
// sent, else the request's own method and its path below /v1/verify (Envoy's ext_authz with
// path_prefix /v1/verify: "/v1/verify/api/x" is "/api/x"). False for a plain /v1/verify without
// X-Forwarded-Uri: there is no forwarded request, only what headers and query ask.
bool forwardedRequest(const HttpRequest& request, std::string_view& method, std::string_view& path);

// --- Responses ---------------------------------------------------------------------------------
// A response is written as: appendStatusLine, any appendHeader, then appendBody (which always
// writes Content-Length and Connection). All append to `out` and allocate only when it must grow.

// The reason phrase of a status code ("OK", "Bad Request", ...); "Unknown" for codes not listed.
std::string_view statusReason(int status);
// "HTTP/1.1 <status> <reason>\r\n": answers are HTTP/1.1 also to 1.0 requests (RFC 9110 6.2).
void appendStatusLine(std::string& out, int status);
// "<name>: <value>\r\n". CR, LF and other control characters in the value become spaces, so that
// no value can split the response.
void appendHeader(std::string& out, std::string_view name, std::string_view value);
// Content-Type (when not empty), Content-Length, Connection: keep-alive|close, the empty line and
// the body.
void appendBody(std::string& out, bool keepAlive, std::string_view contentType,
                std::string_view body);

// A verify answer with no body: 200 with X-Tokend-Reason: ok, X-Tokend-User-Id,
// X-Tokend-Username, X-Tokend-Token-Id, X-Tokend-Login-Type, X-Tokend-Expires-At and
// X-Tokend-Grant: owned (answer.owned: the grant rests on the caller's owner) or site; or the
// reason's status (401, 403, 400) with X-Tokend-Reason and, for 401 and 403, WWW-Authenticate:
// Bearer realm="tokend", error="invalid_token" (401) or error="insufficient_scope" (403). All
// carry Cache-Control: no-store.
void appendVerifyResponse(std::string& out, const VerifyAnswer& answer, bool keepAlive);
// The answer to a forwarded request that no route rule covers, for an authenticated token: 403
// with X-Tokend-Reason: no_rule, WWW-Authenticate: Bearer ... error="insufficient_scope",
// Cache-Control: no-store, no body. (A token that fails authentication gets its own 401.)
void appendNoRuleResponse(std::string& out, bool keepAlive);
// A JSON response whose body is already serialized.
void appendJsonResponse(std::string& out, int status, bool keepAlive, std::string_view json);
// {"message": <message>, "detail": <detail>}, the error shape of SPEC 8.
void appendJsonError(std::string& out, int status, bool keepAlive, std::string_view message,
                     std::string_view detail);
// The answer to a parse Error: its status, a JSON error, Connection: close.
void appendParseErrorResponse(std::string& out, const HttpParse& error);
// `s` as a JSON string literal, quotes included.
void appendJsonString(std::string& out, std::string_view s);

}  // namespace tokend::daemon
