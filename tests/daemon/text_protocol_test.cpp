// Tests for protocol detection and the text protocol's parser and encoders.
#include "daemon/text_protocol.h"

#include <doctest/doctest.h>

#include "tests/support/alloc_counter.h"

#include <cstdlib>
#include <new>

#include <deque>
#include <string>
#include <vector>

#include "base/uuid.h"

using namespace tokend::daemon;
using tokend::Uuid;
using tokend::verifier::LoginType;
using tokend::verifier::Reason;

namespace {

constexpr std::string_view kToken = "abcdefghij-0123456789abcdefghijkl";
constexpr std::string_view kUuid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

// Keeps a test's input alive for the whole run: parsed requests are views into it.
std::string_view keep(std::string s) {
  static std::deque<std::string> kept;
  return kept.emplace_back(std::move(s));
}

TextRequest parseOne(std::string_view line) {
  TextParse p = parseTextLine(line);
  REQUIRE(p.status == ParseStatus::Complete);
  CHECK(p.consumed == line.size());
  return p.request;
}

}  // namespace

TEST_SUITE("ProtocolDetect") {
  TEST_CASE("one byte of 0x80 or more is binary") {
    CHECK(detectProtocol("\xd7") == Protocol::Binary);
    CHECK(detectProtocol("\x80") == Protocol::Binary);
    CHECK(detectProtocol("\xff rest") == Protocol::Binary);
  }

  TEST_CASE("VERIFY and PING are text") {
    CHECK(detectProtocol("VERIFY") == Protocol::Text);
    CHECK(detectProtocol("VERIFY abc\n") == Protocol::Text);
    CHECK(detectProtocol("PING\n") == Protocol::Text);
    CHECK(detectProtocol("PING") == Protocol::Text);
  }

  TEST_CASE("each HTTP method followed by a space and a slash is HTTP") {
    for (const char* s : {"GET /", "POST /", "PUT /", "DELETE /", "HEAD /", "OPTIONS /", "PATCH /",
                          "GET /v1/verify HTTP/1.1\r\n"}) {
      CAPTURE(s);
      CHECK(detectProtocol(s) == Protocol::Http);
    }
  }

  TEST_CASE("a prefix of a possible start asks for more bytes") {
    for (const char* s : {"", "V", "VERI", "P", "PI", "PU", "PUT", "PUT ", "PO", "PA", "G", "GET",
                          "GET ", "OPTIONS", "OPTIONS ", "D", "H", "HEAD "}) {
      CAPTURE(s);
      CHECK(detectProtocol(s) == Protocol::NeedMore);
    }
  }

  TEST_CASE("anything else is unknown as soon as it can be told") {
    for (const char* s :
         {"X", "verify", "get /", "GET x", "GETX", "PINX", "\n", " VERIFY", "CONNECT /", "\x7f"}) {
      CAPTURE(s);
      CHECK(detectProtocol(s) == Protocol::Unknown);
    }
  }

  TEST_CASE("never needs more than kMaxDetectBytes") {
    CHECK(detectProtocol("OPTIONS /") == Protocol::Http);
    CHECK(kMaxDetectBytes == 9);
  }
}

TEST_SUITE("TextProtocol") {
  TEST_CASE("PING is a ping") {
    CHECK(parseOne("PING\n").command == TextCommand::Ping);
    CHECK(parseOne("PING\r\n").command == TextCommand::Ping);
    CHECK(parseOne("  PING \t\n").command == TextCommand::Ping);
  }

  TEST_CASE("VERIFY with a token only") {
    TextRequest r = parseOne(keep("VERIFY " + std::string(kToken) + "\n"));
    CHECK(r.command == TextCommand::Verify);
    CHECK(r.query.token == kToken);
    CHECK(r.query.permission.empty());
    CHECK(r.query.object.empty());
    CHECK(r.query.owner.empty());
  }

  TEST_CASE("VERIFY with token, permission, object and owner") {
    std::string line = "VERIFY " + std::string(kToken) +
                       " workspace:read workspace:" + std::string(kUuid) + " " +
                       std::string(kUuid) + "\r\n";
    TextRequest r = parseOne(line);
    REQUIRE(r.command == TextCommand::Verify);
    CHECK(r.query.token == kToken);
    CHECK(r.query.permission == "workspace:read");
    CHECK(r.query.object == "workspace:" + std::string(kUuid));
    CHECK(r.query.owner == kUuid);
  }

  TEST_CASE("VERIFY with a permission only") {
    TextRequest r = parseOne("VERIFY tok workspace:create\n");
    CHECK(r.query.permission == "workspace:create");
    CHECK(r.query.object.empty());
  }

  TEST_CASE("a dash holds the object's place so an owner can follow") {
    TextRequest r = parseOne(keep("VERIFY tok workspace:read - " + std::string(kUuid) + "\n"));
    REQUIRE(r.command == TextCommand::Verify);
    CHECK(r.query.object.empty());
    CHECK(r.query.owner == kUuid);
    CHECK(parseOne("VERIFY tok workspace:read -\n").query.object.empty());
  }

  TEST_CASE("runs of spaces and tabs separate words") {
    TextRequest r = parseOne("VERIFY \t tok\t\tworkspace:read   \n");
    CHECK(r.command == TextCommand::Verify);
    CHECK(r.query.token == "tok");
    CHECK(r.query.permission == "workspace:read");
  }

  TEST_CASE("bad lines are answered with an error message and do not close") {
    struct Case {
      const char* line;
      std::string_view error;
    };
    for (Case c :
         {Case{"VERIFY\n", "VERIFY needs a token"}, Case{"VERIFY   \n", "VERIFY needs a token"},
          Case{"VERIFY a b c d e\n", "too many arguments"},
          Case{"VERIFY a b c d e f g h\n", "too many arguments"},
          Case{"PING now\n", "PING takes no arguments"}, Case{"verify tok\n", "unknown command"},
          Case{"ping\n", "unknown command"}, Case{"HELLO\n", "unknown command"},
          Case{"\n", "empty request"}, Case{"\r\n", "empty request"},
          Case{"  \t\n", "empty request"}, Case{"VERIFY a\rb\n", "control character in request"},
          Case{"PING\r\r\n", "control character in request"},
          Case{"VERIFY a\x01\n", "control character in request"}}) {
      CAPTURE(c.line);
      TextParse p = parseTextLine(c.line);
      REQUIRE(p.status == ParseStatus::Complete);
      CHECK(p.consumed == std::string_view(c.line).size());
      CHECK(p.request.command == TextCommand::Invalid);
      CHECK(p.request.error == c.error);
    }
    // NUL needs an explicit length.
    TextParse p = parseTextLine(std::string_view("VERIFY a\0b\n", 11));
    CHECK(p.request.command == TextCommand::Invalid);
  }

  TEST_CASE("a line without its newline needs more input") {
    CHECK(parseTextLine("").status == ParseStatus::NeedMore);
    CHECK(parseTextLine("PING").status == ParseStatus::NeedMore);
    CHECK(parseTextLine("PING\r").status == ParseStatus::NeedMore);
    CHECK(parseTextLine("VERIFY tok workspace:read").status == ParseStatus::NeedMore);
  }

  TEST_CASE("every split point yields NeedMore and then the same request") {
    std::string line =
        "VERIFY " + std::string(kToken) + " workspace:read - " + std::string(kUuid) + "\r\n";
    for (size_t cut = 0; cut < line.size(); ++cut) {
      CAPTURE(cut);
      CHECK(parseTextLine(std::string_view(line).substr(0, cut)).status == ParseStatus::NeedMore);
    }
    TextParse whole = parseTextLine(line);
    REQUIRE(whole.status == ParseStatus::Complete);
    CHECK(whole.request.query.owner == kUuid);
  }

  TEST_CASE("pipelined lines are parsed in order") {
    std::string in = "PING\nVERIFY a\r\nBAD\nVERIFY b x:y\nPIN";
    std::string_view rest = in;
    std::vector<std::string> seen;
    for (;;) {
      TextParse p = parseTextLine(rest);
      if (p.status != ParseStatus::Complete) {
        CHECK(p.status == ParseStatus::NeedMore);
        break;
      }
      switch (p.request.command) {
        case TextCommand::Ping:
          seen.push_back("ping");
          break;
        case TextCommand::Verify:
          seen.push_back("verify " + std::string(p.request.query.token));
          break;
        case TextCommand::Invalid:
          seen.push_back("err " + std::string(p.request.error));
          break;
      }
      rest.remove_prefix(p.consumed);
    }
    CHECK(seen == std::vector<std::string>{"ping", "verify a", "err unknown command", "verify b"});
    CHECK(rest == "PIN");
  }

  TEST_CASE("a line of up to 8 KiB with its newline is accepted") {
    std::string line = "VERIFY " + std::string(kMaxTextLine - 8, 'a') + "\n";
    REQUIRE(line.size() == kMaxTextLine);
    TextParse p = parseTextLine(line);
    REQUIRE(p.status == ParseStatus::Complete);
    CHECK(p.request.query.token.size() == kMaxTextLine - 8);
  }

  TEST_CASE("8 KiB without a newline is an error that closes") {
    std::string line = "VERIFY " + std::string(kMaxTextLine - 7, 'a');
    REQUIRE(line.size() == kMaxTextLine);
    CHECK(parseTextLine(line).status == ParseStatus::Error);
    CHECK(parseTextLine(line + "\n").status == ParseStatus::Error);
    CHECK(parseTextLine(std::string_view(line).substr(0, kMaxTextLine - 1)).status ==
          ParseStatus::NeedMore);
    std::string out;
    appendTextError(out, kTextLineTooLong);
    CHECK(out == "ERR line too long\n");
  }

  TEST_CASE("OK carries user id, username, token id, login type and expiry") {
    VerifyAnswer a;
    a.reason = Reason::Ok;
    a.userId = *Uuid::parse(kUuid);
    a.username = "alice";
    a.tokenId = "abcdefghij";
    a.loginType = LoginType::Oidc;
    a.expiresAt = 1700000000;
    std::string out = "prefix|";
    appendTextOk(out, a);
    CHECK(out ==
          "prefix|OK 3f2504e0-4f89-41d3-9a0c-0305e82c3301 alice abcdefghij oidc "
          "1700000000\n");
    out.clear();
    appendTextAnswer(out, a);
    CHECK(out.starts_with("OK "));
  }

  TEST_CASE("an owned grant ends the OK line with the word owned") {
    VerifyAnswer a;
    a.reason = Reason::Ok;
    a.userId = *Uuid::parse(kUuid);
    a.username = "alice";
    a.tokenId = "abcdefghij";
    a.expiresAt = 1700000000;
    a.owned = true;
    std::string out;
    appendTextAnswer(out, a);
    CHECK(out ==
          "OK 3f2504e0-4f89-41d3-9a0c-0305e82c3301 alice abcdefghij token 1700000000 owned\n");
    // A denial never says owned.
    a.reason = Reason::Role;
    out.clear();
    appendTextAnswer(out, a);
    CHECK(out == "DENY role 403\n");
  }

  TEST_CASE("each login type has its word") {
    CHECK(loginTypeWord(LoginType::Token) == "token");
    CHECK(loginTypeWord(LoginType::Password) == "password");
    CHECK(loginTypeWord(LoginType::Oidc) == "oidc");
    CHECK(loginTypeWord(LoginType::Github) == "github");
  }

  TEST_CASE("DENY carries the reason and its HTTP status") {
    std::string out;
    appendTextDeny(out, Reason::Expired);
    appendTextDeny(out, Reason::Scope);
    appendTextDeny(out, Reason::BadRequest);
    VerifyAnswer a;
    a.reason = Reason::Missing;
    appendTextAnswer(out, a);
    CHECK(out == "DENY expired 401\nDENY scope 403\nDENY bad_request 400\nDENY missing 401\n");
  }

  TEST_CASE("PONG and ERR answers are single lines") {
    std::string out;
    appendTextPong(out);
    appendTextError(out, "unknown command");
    appendTextError(out, "two\nlines\r");
    CHECK(out == "PONG\nERR unknown command\nERR two lines \n");
  }

  TEST_CASE("encoders reuse the string's capacity") {
    std::string out;
    out.reserve(256);
    const char* data = out.data();
    VerifyAnswer a;
    a.reason = Reason::Ok;
    a.username = "bob";
    a.tokenId = "0123456789";
    a.expiresAt = -1;
    for (int i = 0; i < 100; ++i) {
      out.clear();
      appendTextAnswer(out, a);
    }
    CHECK(out.data() == data);
    CHECK(out.ends_with(" token -1\n"));
  }

  TEST_CASE("parsing and answering allocate nothing once the output has room") {
    std::string_view in =
        "VERIFY abcdefghij-0123456789abcdefghijkl workspace:read - x\r\nPING\nX\n";
    std::string out;
    out.reserve(4096);
    VerifyAnswer a;
    a.reason = Reason::Ok;
    a.username = "alice";
    a.tokenId = "abcdefghij";
    long before = tokend::test::allocations();
    for (int i = 0; i < 100; ++i) {
      out.clear();
      for (std::string_view rest = in; !rest.empty();) {
        TextParse p = parseTextLine(rest);
        if (p.status != ParseStatus::Complete) break;
        if (p.request.command == TextCommand::Verify) appendTextAnswer(out, a);
        if (p.request.command == TextCommand::Ping) appendTextPong(out);
        if (p.request.command == TextCommand::Invalid) appendTextError(out, p.request.error);
        rest.remove_prefix(p.consumed);
      }
    }
    long after = tokend::test::allocations();
    CHECK(after == before);
    CHECK(out.ends_with("PONG\nERR unknown command\n"));
  }
}
