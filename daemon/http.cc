// The HTTP/1.1 request parser, the value lookups (query, cookie, token) and the response writer.
#include "daemon/http.h"

#include <algorithm>
#include <charconv>
#include <cstring>

namespace tokend::daemon {
namespace {

constexpr std::string_view kVerifyPath = "/v1/verify";

// RFC 9110 5.6.2: token characters.
bool isTchar(char ch) {
  auto c = static_cast<unsigned char>(ch);
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(ch) != std::string_view::npos;
}

bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!isTchar(c)) return false;
  return true;
}

bool isBlank(char c) {
  return c == ' ' || c == '\t';
}

// Field values may hold visible ASCII, blanks and obs-text (bytes >= 0x80), nothing else.
bool isFieldValueChar(char ch) {
  auto c = static_cast<unsigned char>(ch);
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

char asciiLower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (asciiLower(a[i]) != asciiLower(b[i])) return false;
  return true;
}

std::string_view trimBlanks(std::string_view s) {
  while (!s.empty() && isBlank(s.front())) s.remove_prefix(1);
  while (!s.empty() && isBlank(s.back())) s.remove_suffix(1);
  return s;
}

enum class LineStatus { Found, NeedMore, TooLong, BareCr };

// Finds the line that starts at `pos` and whose LF lies before `limit`. `text` excludes the LF and
// a CR right before it; `next` is the offset after the LF.
LineStatus nextLine(std::string_view in, size_t pos, size_t limit, std::string_view& text,
                    size_t& next) {
  size_t window = in.size() < limit ? in.size() : limit;
  const void* lf = pos < window ? std::memchr(in.data() + pos, '\n', window - pos) : nullptr;
  if (lf == nullptr) return in.size() >= limit ? LineStatus::TooLong : LineStatus::NeedMore;
  size_t end = static_cast<size_t>(static_cast<const char*>(lf) - in.data());
  text = in.substr(pos, end - pos);
  if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
  // A CR anywhere else is the bare CR that RFC 9112 2.2 says to refuse or replace: refuse it, one
  // of the ways two parsers come to disagree on where a request ends.
  if (text.find('\r') != std::string_view::npos) return LineStatus::BareCr;
  next = end + 1;
  return LineStatus::Found;
}

HttpParse fail(int status, std::string_view message) {
  HttpParse p;
  p.status = ParseStatus::Error;
  p.errorStatus = status;
  p.errorMessage = message;
  return p;
}

// Parses `method SP target SP version` into the request; returns 0 or an error status.
int parseRequestLine(std::string_view line, HttpRequest& r, std::string_view& message) {
  size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) return message = "malformed request line", 400;
  r.method = line.substr(0, sp1);
  if (!isToken(r.method)) return message = "malformed method", 400;
  std::string_view rest = line.substr(sp1 + 1);
  size_t sp2 = rest.find(' ');
  if (sp2 == std::string_view::npos) return message = "malformed request line", 400;
  r.target = rest.substr(0, sp2);
  std::string_view version = rest.substr(sp2 + 1);

  if (r.target.empty() || r.target[0] != '/')
    return message = "request target must be an absolute path", 400;
  for (char ch : r.target) {
    auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f) return message = "invalid character in request target", 400;
  }
  size_t q = r.target.find('?');
  r.path = r.target.substr(0, q);
  r.query = q == std::string_view::npos ? std::string_view() : r.target.substr(q + 1);

  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (version.size() != 8 || !version.starts_with("HTTP/") || !digit(version[5]) ||
      version[6] != '.' || !digit(version[7]))
    return message = "malformed HTTP version", 400;
  if (version[5] != '1' || (version[7] != '0' && version[7] != '1'))
    return message = "only HTTP/1.0 and HTTP/1.1 are supported", 505;
  r.minorVersion = version[7] - '0';
  return 0;
}

// Reads Content-Length; returns 0 or an error status. Digits only: "+5", "-1", "5, 5" and blanks
// inside are refused, as is a second Content-Length field even with the same value.
int parseContentLength(const HttpRequest& r, size_t& length, bool& present,
                       std::string_view& message) {
  present = false;
  length = 0;
  for (const HttpHeader& h : r.headerFields()) {
    if (!equalsIgnoreCase(h.name, "Content-Length")) continue;
    if (present) return message = "duplicate Content-Length", 400;
    present = true;
    if (h.value.empty()) return message = "malformed Content-Length", 400;
    for (char c : h.value)
      if (c < '0' || c > '9') return message = "malformed Content-Length", 400;
    // Saturate rather than overflow: any value past the limit is refused the same way.
    for (char c : h.value) {
      length = length * 10 + static_cast<size_t>(c - '0');
      if (length > kMaxHttpBody) return message = "request body too large", 413;
    }
  }
  return 0;
}

bool hasField(const HttpRequest& r, std::string_view name) {
  for (const HttpHeader& h : r.headerFields())
    if (equalsIgnoreCase(h.name, name)) return true;
  return false;
}

bool connectionHas(const HttpRequest& r, std::string_view option) {
  for (const HttpHeader& h : r.headerFields()) {
    if (!equalsIgnoreCase(h.name, "Connection")) continue;
    std::string_view v = h.value;
    while (!v.empty()) {
      size_t comma = v.find(',');
      std::string_view item = trimBlanks(v.substr(0, comma));
      if (equalsIgnoreCase(item, option)) return true;
      if (comma == std::string_view::npos) break;
      v.remove_prefix(comma + 1);
    }
  }
  return false;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void appendDecimal(std::string& out, int64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;  // 24 bytes hold any int64
  out.append(buf, end);
}

}  // namespace

std::string_view HttpRequest::header(std::string_view name) const {
  for (const HttpHeader& h : headerFields())
    if (equalsIgnoreCase(h.name, name)) return h.value;
  return {};
}

HttpParse parseHttpRequest(std::string_view in, HttpRequest& r) {
  // Reset field by field: assigning a fresh HttpRequest would copy its 2 KiB header array on
  // every call. Header slots past headerCount are never read.
  r.method = r.target = r.path = r.query = r.body = {};
  r.minorVersion = 1;
  r.keepAlive = true;
  r.headerCount = 0;
  HttpParse p;

  // RFC 9112 2.2: ignore empty lines before the request line (some clients send a CRLF after a
  // POST body). They count towards the head limit like any other byte.
  size_t pos = 0;
  while (pos < in.size() && pos < kMaxHttpHead) {
    if (in[pos] == '\n') {
      ++pos;
    } else if (in[pos] == '\r' && pos + 1 < in.size() && in[pos + 1] == '\n') {
      pos += 2;
    } else {
      break;
    }
  }

  std::string_view line;
  size_t next = 0;
  switch (nextLine(in, pos, kMaxHttpHead, line, next)) {
    case LineStatus::NeedMore:
      return p;
    case LineStatus::TooLong:
      return fail(414, "request line too long");
    case LineStatus::BareCr:
      return fail(400, "bare CR in request line");
    case LineStatus::Found:
      break;
  }
  std::string_view message;
  if (int status = parseRequestLine(line, r, message)) return fail(status, message);
  pos = next;

  for (;;) {
    switch (nextLine(in, pos, kMaxHttpHead, line, next)) {
      case LineStatus::NeedMore:
        return p;
      case LineStatus::TooLong:
        return fail(431, "request header fields too large");
      case LineStatus::BareCr:
        return fail(400, "bare CR in header field");
      case LineStatus::Found:
        break;
    }
    pos = next;
    if (line.empty()) break;
    // obs-fold: RFC 9112 5.2 lets a server refuse it with 400; nothing we serve needs it.
    if (isBlank(line[0])) return fail(400, "obsolete line folding");
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return fail(400, "header field without a colon");
    std::string_view name = line.substr(0, colon);
    // This also refuses blanks between name and colon (RFC 9112 5.1: MUST reject).
    if (!isToken(name)) return fail(400, "malformed header field name");
    std::string_view value = trimBlanks(line.substr(colon + 1));
    for (char c : value)
      if (!isFieldValueChar(c)) return fail(400, "control character in header field value");
    if (r.headerCount == kMaxHttpHeaders) return fail(431, "too many header fields");
    r.headers[r.headerCount++] = HttpHeader{name, value};
  }

  size_t length = 0;
  bool hasLength = false;
  if (int status = parseContentLength(r, length, hasLength, message)) return fail(status, message);
  if (hasField(r, "Transfer-Encoding")) {
    // With Content-Length too it is the classic request-smuggling shape (RFC 9112 6.1).
    if (hasLength) return fail(400, "both Transfer-Encoding and Content-Length");
    return fail(501, "Transfer-Encoding is not implemented; send Content-Length");
  }

  if (in.size() - pos < length) return p;
  r.body = in.substr(pos, length);
  if (r.minorVersion >= 1)
    r.keepAlive = !connectionHas(r, "close");
  else
    r.keepAlive = connectionHas(r, "keep-alive") && !connectionHas(r, "close");
  p.status = ParseStatus::Complete;
  p.consumed = pos + length;
  return p;
}

Result<std::string_view> percentDecode(std::string_view encoded, DecodeBuffer& scratch) {
  if (encoded.find_first_of("%+") == std::string_view::npos) return encoded;
  // The decoded form is never longer than the encoded one.
  if (scratch.storage_.size() - scratch.used_ < encoded.size())
    return makeError("percent-decoding buffer full");
  char* start = scratch.storage_.data() + scratch.used_;
  char* o = start;
  for (size_t i = 0; i < encoded.size(); ++i) {
    char c = encoded[i];
    if (c == '+') {
      *o++ = ' ';
    } else if (c == '%') {
      if (i + 2 >= encoded.size()) return makeError("malformed percent-encoding");
      int hi = hexValue(encoded[i + 1]), lo = hexValue(encoded[i + 2]);
      if (hi < 0 || lo < 0) return makeError("malformed percent-encoding");
      *o++ = static_cast<char>(hi << 4 | lo);
      i += 2;
    } else {
      *o++ = c;
    }
  }
  scratch.used_ += static_cast<size_t>(o - start);
  return std::string_view(start, static_cast<size_t>(o - start));
}

Result<std::string_view> queryParam(std::string_view query, std::string_view name,
                                    DecodeBuffer& scratch) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name)
      return percentDecode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1),
                           scratch);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::string_view();
}

std::string_view cookieValue(const HttpRequest& r, std::string_view name) {
  for (const HttpHeader& h : r.headerFields()) {
    if (!equalsIgnoreCase(h.name, "Cookie")) continue;
    std::string_view v = h.value;
    while (!v.empty()) {
      size_t semi = v.find(';');
      std::string_view pair = trimBlanks(v.substr(0, semi));
      size_t eq = pair.find('=');
      if (eq != std::string_view::npos && trimBlanks(pair.substr(0, eq)) == name) {
        std::string_view value = trimBlanks(pair.substr(eq + 1));
        if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
          value = value.substr(1, value.size() - 2);
        return value;
      }
      if (semi == std::string_view::npos) break;
      v.remove_prefix(semi + 1);
    }
  }
  return {};
}

Result<std::string_view> extractToken(const HttpRequest& r, DecodeBuffer& scratch) {
  if (std::string_view t = cookieValue(r, "coder_session_token"); !t.empty()) return t;

  auto fromQuery = queryParam(r.query, "coder_session_token", scratch);
  if (!fromQuery) return fromQuery;
  if (!fromQuery->empty()) return fromQuery;

  if (std::string_view t = r.header("Coder-Session-Token"); !t.empty()) return t;

  std::string_view auth = r.header("Authorization");
  size_t sp = auth.find_first_of(" \t");
  if (sp != std::string_view::npos && equalsIgnoreCase(auth.substr(0, sp), "Bearer")) {
    std::string_view t = trimBlanks(auth.substr(sp));
    if (!t.empty()) return t;
  }

  return queryParam(r.query, "access_token", scratch);
}

Result<VerifyQuery> extractVerifyQuery(const HttpRequest& r, DecodeBuffer& scratch) {
  VerifyQuery q;
  auto token = extractToken(r, scratch);
  if (!token) return token.error();
  q.token = *token;

  struct Source {
    std::string_view param;
    std::string_view header;
    std::string_view VerifyQuery::*field;
  };
  static constexpr Source kSources[] = {
      {"perm", "X-Tokend-Permission", &VerifyQuery::permission},
      {"object", "X-Tokend-Object", &VerifyQuery::object},
      {"owner", "X-Tokend-Owner", &VerifyQuery::owner},
  };
  // The gateway sets headers; the query may be the client's (L7 of the 2026 review): headers win.
  const bool ownQuery = r.path == kVerifyPath;
  for (const Source& s : kSources) {
    q.*s.field = r.header(s.header);
    if (!(q.*s.field).empty() || !ownQuery) continue;
    auto v = queryParam(r.query, s.param, scratch);
    if (!v) return v.error();
    q.*s.field = *v;
  }
  return q;
}

bool isVerifyPath(std::string_view path) {
  return path.starts_with(kVerifyPath) &&
         (path.size() == kVerifyPath.size() || path[kVerifyPath.size()] == '/');
}

bool forwardedRequest(const HttpRequest& r, std::string_view& method, std::string_view& path) {
  if (std::string_view uri = r.header("X-Forwarded-Uri"); !uri.empty()) {
    method = r.header("X-Forwarded-Method");
    path = uri.substr(0, uri.find_first_of("?#"));
    return true;
  }
  if (r.path.size() > kVerifyPath.size() && isVerifyPath(r.path)) {
    method = r.method;
    path = r.path.substr(kVerifyPath.size());
    return true;
  }
  return false;
}

std::string_view statusReason(int status) {
  struct Phrase {
    int status;
    std::string_view text;
  };
  static constexpr Phrase kPhrases[] = {
      {100, "Continue"},
      {200, "OK"},
      {201, "Created"},
      {204, "No Content"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {408, "Request Timeout"},
      {409, "Conflict"},
      {411, "Length Required"},
      {413, "Content Too Large"},
      {414, "URI Too Long"},
      {415, "Unsupported Media Type"},
      {422, "Unprocessable Content"},
      {429, "Too Many Requests"},
      {431, "Request Header Fields Too Large"},
      {500, "Internal Server Error"},
      {501, "Not Implemented"},
      {503, "Service Unavailable"},
      {505, "HTTP Version Not Supported"},
      {507, "Insufficient Storage"},
  };
  for (const Phrase& p : kPhrases)
    if (p.status == status) return p.text;
  return "Unknown";
}

void appendStatusLine(std::string& out, int status) {
  out.append("HTTP/1.1 ");
  appendDecimal(out, status);
  out.push_back(' ');
  out.append(statusReason(status));
  out.append("\r\n");
}

void appendHeader(std::string& out, std::string_view name, std::string_view value) {
  out.append(name);
  out.append(": ");
  size_t start = out.size();
  out.append(value);
  for (size_t i = start; i < out.size(); ++i)
    if (!isFieldValueChar(out[i])) out[i] = ' ';
  out.append("\r\n");
}

void appendBody(std::string& out, bool keepAlive, std::string_view contentType,
                std::string_view body) {
  if (!contentType.empty()) appendHeader(out, "Content-Type", contentType);
  out.append("Content-Length: ");
  appendDecimal(out, static_cast<int64_t>(body.size()));
  out.append(keepAlive ? "\r\nConnection: keep-alive\r\n\r\n" : "\r\nConnection: close\r\n\r\n");
  out.append(body);
}

void appendVerifyResponse(std::string& out, const VerifyAnswer& a, bool keepAlive) {
  int status = verifier::httpStatus(a.reason);
  appendStatusLine(out, status);
  appendHeader(out, "X-Tokend-Reason", verifier::reasonName(a.reason));
  if (a.reason == verifier::Reason::Ok) {
    char uuid[36];
    a.userId.format(uuid);
    appendHeader(out, "X-Tokend-User-Id", std::string_view(uuid, sizeof uuid));
    appendHeader(out, "X-Tokend-Username", a.username);
    appendHeader(out, "X-Tokend-Token-Id", a.tokenId);
    appendHeader(out, "X-Tokend-Login-Type", loginTypeWord(a.loginType));
    out.append("X-Tokend-Expires-At: ");
    appendDecimal(out, a.expiresAt);
    out.append("\r\n");
    // SPEC 6: an owned grant holds only if the object really is the user's; the gateway or the
    // upstream must check that from its own data before it acts on this answer.
    out.append(a.owned ? "X-Tokend-Grant: owned\r\n" : "X-Tokend-Grant: site\r\n");
  } else if (status == 401) {
    out.append("WWW-Authenticate: Bearer realm=\"tokend\", error=\"invalid_token\"\r\n");
  } else if (status == 403) {
    out.append("WWW-Authenticate: Bearer realm=\"tokend\", error=\"insufficient_scope\"\r\n");
  }
  // An auth answer is about one request at one moment: no cache may keep it.
  out.append("Cache-Control: no-store\r\n");
  appendBody(out, keepAlive, {}, {});
}

void appendNoRuleResponse(std::string& out, bool keepAlive) {
  appendStatusLine(out, 403);
  out.append(
      "X-Tokend-Reason: no_rule\r\n"
      "WWW-Authenticate: Bearer realm=\"tokend\", error=\"insufficient_scope\"\r\n"
      "Cache-Control: no-store\r\n");
  appendBody(out, keepAlive, {}, {});
}

void appendJsonResponse(std::string& out, int status, bool keepAlive, std::string_view json) {
  appendStatusLine(out, status);
  appendBody(out, keepAlive, "application/json", json);
}

void appendJsonString(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out.append("\\u00");
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 15]);
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

void appendJsonError(std::string& out, int status, bool keepAlive, std::string_view message,
                     std::string_view detail) {
  appendStatusLine(out, status);
  // The body is built after the headers so that its length is known: write the body into `out`
  // at its end, then move it behind the headers. Content-Length is bounded by what the messages
  // hold, so one insertion is cheap, and the whole stays in `out` without a temporary string.
  size_t bodyStart = out.size();
  out.append("{\"message\":");
  appendJsonString(out, message);
  out.append(",\"detail\":");
  appendJsonString(out, detail);
  out.push_back('}');
  size_t bodyLength = out.size() - bodyStart;

  size_t headStart = out.size();
  appendHeader(out, "Content-Type", "application/json");
  out.append("Content-Length: ");
  appendDecimal(out, static_cast<int64_t>(bodyLength));
  out.append(keepAlive ? "\r\nConnection: keep-alive\r\n\r\n" : "\r\nConnection: close\r\n\r\n");
  // Rotate [bodyStart, headStart) behind [headStart, end): headers first, then the body.
  std::rotate(out.begin() + static_cast<std::ptrdiff_t>(bodyStart),
              out.begin() + static_cast<std::ptrdiff_t>(headStart), out.end());
}

void appendParseErrorResponse(std::string& out, const HttpParse& error) {
  appendJsonError(out, error.errorStatus, false, statusReason(error.errorStatus),
                  error.errorMessage);
}

}  // namespace tokend::daemon
