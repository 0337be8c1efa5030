// tokenload's request templates and answer parsers for the three protocols.
#include "tools/load_wire.h"

#include <cstring>
#include <optional>

#include "daemon/binary_protocol.h"

namespace tokend::tools {
namespace {

using verifier::Reason;

constexpr size_t kMaxPermission = 1024;
// An answer head bigger than this is not one of the daemon's verify answers (those are ~300 bytes).
constexpr size_t kMaxHttpAnswerHead = 16384;

Answer broken(std::string_view why) {
  Answer a;
  a.status = AnswerStatus::Broken;
  a.message = why;
  return a;
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

std::optional<uint64_t> parseUnsigned(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

// The next blank-separated word of `s` from `pos`, moving `pos` past it.
std::string_view nextWord(std::string_view s, size_t& pos) {
  while (pos < s.size() && s[pos] == ' ') ++pos;
  size_t start = pos;
  while (pos < s.size() && s[pos] != ' ') ++pos;
  return s.substr(start, pos - start);
}

Answer parseBinary(std::string_view in) {
  daemon::FrameParse f = daemon::parseFrame(in);
  if (f.status == daemon::ParseStatus::NeedMore) return {};
  if (f.status == daemon::ParseStatus::Error) return broken(f.message);
  Answer a;
  a.consumed = f.consumed;
  a.requestId = f.frame.header.requestId;
  if (f.frame.header.opcode == daemon::Opcode::VerifyResult) {
    auto r = daemon::decodeVerifyResult(f.frame.payload);
    if (!r) {
      a.status = AnswerStatus::Refused;
      a.message = "VERIFY_RESULT payload does not decode";
      return a;
    }
    a.reason = r->answer.reason;
    if (r->httpStatus != verifier::httpStatus(a.reason)) {
      a.status = AnswerStatus::Refused;
      a.message = "VERIFY_RESULT status does not match its reason";
      return a;
    }
    if (a.reason == Reason::Ok && r->answer.tokenId.size() != verifier::kTokenIdLength) {
      a.status = AnswerStatus::Refused;
      a.message = "VERIFY_RESULT ok without a token id";
      return a;
    }
    a.tokenId = r->answer.tokenId;
    a.status = AnswerStatus::Verdict;
    return a;
  }
  a.status = AnswerStatus::Refused;
  if (f.frame.header.opcode == daemon::Opcode::Error) {
    auto e = daemon::decodeError(f.frame.payload);
    a.message = e ? e->message : std::string_view("ERROR frame that does not decode");
    // Codes 1-3 are framing errors, after which the server closes (docs/protocol.md).
    a.closes = e && static_cast<uint16_t>(e->code) <= 3;
  } else {
    a.message = "unexpected opcode in answer";
  }
  return a;
}

Answer parseText(std::string_view in) {
  const void* nl = std::memchr(in.data(), '\n', in.size());
  if (nl == nullptr) {
    // The daemon's answer lines are short; a long run without a newline is not an answer.
    if (in.size() > 4096) return broken("text answer line too long");
    return {};
  }
  size_t end = static_cast<size_t>(static_cast<const char*>(nl) - in.data());
  std::string_view line = in.substr(0, end);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  Answer a;
  a.consumed = end + 1;
  size_t pos = 0;
  std::string_view verb = nextWord(line, pos);
  if (verb == "OK") {
    std::string_view words[5];
    for (auto& w : words) w = nextWord(line, pos);
    // A trailing "owned" marks a grant that rests on the owner named (SPEC 6).
    std::string_view extra = nextWord(line, pos);
    if (extra == "owned") extra = nextWord(line, pos);
    if (words[4].empty() || !extra.empty() || words[2].size() != verifier::kTokenIdLength ||
        !parseUnsigned(words[4])) {
      a.status = AnswerStatus::Refused;
      a.message = "OK answer without its five fields";
      return a;
    }
    a.status = AnswerStatus::Verdict;
    a.reason = Reason::Ok;
    a.tokenId = words[2];
    return a;
  }
  if (verb == "DENY") {
    auto reason = verifier::parseReason(nextWord(line, pos));
    auto status = parseUnsigned(nextWord(line, pos));
    if (!reason || *reason == Reason::Ok || !status || !nextWord(line, pos).empty() ||
        *status != static_cast<uint64_t>(verifier::httpStatus(*reason))) {
      a.status = AnswerStatus::Refused;
      a.message = "DENY answer with an unknown reason or a wrong status";
      return a;
    }
    a.status = AnswerStatus::Verdict;
    a.reason = *reason;
    return a;
  }
  a.status = AnswerStatus::Refused;
  a.message = line;
  return a;
}

Answer parseHttp(std::string_view in) {
  size_t headEnd = in.find("\r\n\r\n");
  if (headEnd == std::string_view::npos) {
    if (in.size() > kMaxHttpAnswerHead) return broken("HTTP answer head too large");
    return {};
  }
  std::string_view head = in.substr(0, headEnd + 2);  // each line ends in CRLF
  size_t eol = head.find("\r\n");
  std::string_view statusLine = head.substr(0, eol);
  // "HTTP/1.x NNN", then " <reason phrase>" or nothing.
  if (statusLine.size() < 12 || statusLine.substr(0, 7) != "HTTP/1." || statusLine[8] != ' ' ||
      (statusLine.size() > 12 && statusLine[12] != ' ')) {
    return broken("not an HTTP/1.x status line");
  }
  auto status = parseUnsigned(statusLine.substr(9, 3));
  if (!status) return broken("HTTP status is not a number");

  std::optional<uint64_t> contentLength;
  std::string_view reasonWord, tokenId;
  bool closes = false;
  size_t pos = eol + 2;
  while (pos < head.size()) {
    size_t e = head.find("\r\n", pos);
    std::string_view field = head.substr(pos, e - pos);
    pos = e + 2;
    size_t colon = field.find(':');
    if (colon == std::string_view::npos) return broken("HTTP header field without a colon");
    std::string_view name = field.substr(0, colon);
    std::string_view value = field.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
      value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    if (equalsIgnoreCase(name, "content-length")) {
      contentLength = parseUnsigned(value);
      if (!contentLength) return broken("bad Content-Length in answer");
    } else if (equalsIgnoreCase(name, "x-tokend-reason")) {
      reasonWord = value;
    } else if (equalsIgnoreCase(name, "x-tokend-token-id")) {
      tokenId = value;
    } else if (equalsIgnoreCase(name, "connection")) {
      closes = equalsIgnoreCase(value, "close");
    }
  }
  // The daemon always sends Content-Length; without it the end of the body is the end of the
  // connection, which a pipelining client cannot wait for.
  if (!contentLength) return broken("HTTP answer without Content-Length");
  if (*contentLength > 65536) return broken("HTTP answer body too large");
  size_t total = headEnd + 4 + static_cast<size_t>(*contentLength);
  if (in.size() < total) return {};

  Answer a;
  a.consumed = total;
  a.closes = closes;
  auto reason = verifier::parseReason(reasonWord);
  if (!reason) {
    a.status = AnswerStatus::Refused;
    a.message = reasonWord.empty() ? std::string_view("HTTP answer without X-Tokend-Reason")
                                   : std::string_view("HTTP answer with an unknown reason");
    return a;
  }
  if (*status != static_cast<uint64_t>(verifier::httpStatus(*reason))) {
    a.status = AnswerStatus::Refused;
    a.message = "HTTP status does not match X-Tokend-Reason";
    return a;
  }
  if (*reason == Reason::Ok && tokenId.size() != verifier::kTokenIdLength) {
    a.status = AnswerStatus::Refused;
    a.message = "HTTP 200 without X-Tokend-Token-Id";
    return a;
  }
  a.status = AnswerStatus::Verdict;
  a.reason = *reason;
  a.tokenId = tokenId;
  return a;
}

// Percent-encodes everything but RFC 3986's unreserved characters and ':' (which a query may hold
// as is), so that any permission text reaches the daemon unchanged.
void appendQueryValue(std::string& out, std::string_view v) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (char c : v) {
    auto u = static_cast<unsigned char>(c);
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '.' || c == '_' || c == '~' || c == ':';
    if (plain) {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
}

}  // namespace

std::string_view wireName(Wire w) {
  switch (w) {
    case Wire::Binary:
      return "binary";
    case Wire::Text:
      return "text";
    case Wire::Http:
      return "http";
  }
  return "binary";
}

Result<RequestTemplate> makeVerifyTemplate(Wire wire, std::string_view permission) {
  if (permission.size() > kMaxPermission) return makeError("permission is longer than 1024 bytes");
  const std::string placeholder(verifier::kTokenLength, 'x');
  RequestTemplate t;
  switch (wire) {
    case Wire::Binary: {
      daemon::VerifyQuery q{placeholder, permission, {}, {}};
      if (auto r = daemon::encodeVerify(t.bytes, 0, q); !r) return r.error();
      t.tokenOffset = daemon::kFrameHeaderSize + 2;  // after the token's u16 length
      t.hasId = true;
      break;
    }
    case Wire::Text:
      t.bytes = "VERIFY ";
      t.tokenOffset = t.bytes.size();
      t.bytes += placeholder;
      if (!permission.empty()) {
        // The text protocol splits on blanks: a permission holding one cannot be sent as one word.
        if (permission.find_first_of(" \t\r\n") != std::string_view::npos) {
          return makeError("a permission with blanks cannot be sent over the text protocol");
        }
        t.bytes += ' ';
        t.bytes += permission;
      }
      t.bytes += '\n';
      break;
    case Wire::Http:
      t.bytes = "GET /v1/verify";
      if (!permission.empty()) {
        t.bytes += "?perm=";
        appendQueryValue(t.bytes, permission);
      }
      t.bytes += " HTTP/1.1\r\nHost: tokend\r\nAuthorization: Bearer ";
      t.tokenOffset = t.bytes.size();
      t.bytes += placeholder;
      t.bytes += "\r\n\r\n";
      break;
  }
  return t;
}

Answer parseAnswer(Wire wire, std::string_view in) {
  switch (wire) {
    case Wire::Binary:
      return parseBinary(in);
    case Wire::Text:
      return parseText(in);
    case Wire::Http:
      return parseHttp(in);
  }
  return broken("unknown protocol");
}

}  // namespace tokend::tools
