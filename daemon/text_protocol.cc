// The text protocol's line parser and answer encoders.
#include "daemon/text_protocol.h"

#include <array>
#include <charconv>
#include <cstring>

namespace tokend::daemon {
namespace {

bool isBlank(char c) {
  return c == ' ' || c == '\t';
}

bool isControl(char c) {
  auto u = static_cast<unsigned char>(c);
  return (u < 0x20 && c != '\t') || u == 0x7f;
}

TextRequest invalid(std::string_view message) {
  TextRequest r;
  r.error = message;
  return r;
}

TextRequest parseLine(std::string_view line) {
  // A CR or NUL inside a line would end up in a token or be echoed into a log: refuse outright.
  for (char c : line)
    if (isControl(c)) return invalid("control character in request");

  // One more slot than VERIFY can use, to tell "too many arguments" apart.
  std::array<std::string_view, 6> words;
  size_t count = 0;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && isBlank(line[i])) ++i;
    if (i == line.size()) break;
    size_t start = i;
    while (i < line.size() && !isBlank(line[i])) ++i;
    if (count == words.size()) return invalid("too many arguments");
    words[count++] = line.substr(start, i - start);
  }
  if (count == 0) return invalid("empty request");

  TextRequest r;
  if (words[0] == "PING") {
    if (count != 1) return invalid("PING takes no arguments");
    r.command = TextCommand::Ping;
    return r;
  }
  if (words[0] == "VERIFY") {
    if (count < 2) return invalid("VERIFY needs a token");
    if (count > 5) return invalid("too many arguments");
    r.command = TextCommand::Verify;
    r.query.token = words[1];
    r.query.permission = words[2];
    // "-" holds the object's place so that an owner can be given without an object.
    r.query.object = words[3] == "-" ? std::string_view() : words[3];
    r.query.owner = words[4];
    return r;
  }
  return invalid("unknown command");
}

void appendInt(std::string& out, int64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;  // 24 bytes hold any int64
  out.append(buf, end);
}

}  // namespace

TextParse parseTextLine(std::string_view in) {
  TextParse p;
  size_t window = in.size() < kMaxTextLine ? in.size() : kMaxTextLine;
  const void* lf = std::memchr(in.data(), '\n', window);
  if (lf == nullptr) {
    if (in.size() >= kMaxTextLine) p.status = ParseStatus::Error;
    return p;
  }
  size_t end = static_cast<size_t>(static_cast<const char*>(lf) - in.data());
  std::string_view line = in.substr(0, end);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  p.status = ParseStatus::Complete;
  p.consumed = end + 1;
  p.request = parseLine(line);
  return p;
}

void appendTextOk(std::string& out, const VerifyAnswer& a) {
  char uuid[36];
  a.userId.format(uuid);
  out.append("OK ");
  out.append(uuid, sizeof uuid);
  out.push_back(' ');
  out.append(a.username);
  out.push_back(' ');
  out.append(a.tokenId);
  out.push_back(' ');
  out.append(loginTypeWord(a.loginType));
  out.push_back(' ');
  appendInt(out, a.expiresAt);
  if (a.owned) out.append(" owned");
  out.push_back('\n');
}

void appendTextDeny(std::string& out, verifier::Reason reason) {
  out.append("DENY ");
  out.append(verifier::reasonName(reason));
  out.push_back(' ');
  appendInt(out, verifier::httpStatus(reason));
  out.push_back('\n');
}

void appendTextAnswer(std::string& out, const VerifyAnswer& a) {
  if (a.reason == verifier::Reason::Ok)
    appendTextOk(out, a);
  else
    appendTextDeny(out, a.reason);
}

void appendTextPong(std::string& out) {
  out.append("PONG\n");
}

void appendTextError(std::string& out, std::string_view message) {
  out.append("ERR ");
  size_t start = out.size();
  out.append(message);
  for (size_t i = start; i < out.size(); ++i)
    if (isControl(out[i])) out[i] = ' ';
  out.push_back('\n');
}

}  // namespace tokend::daemon
