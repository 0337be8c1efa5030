// Tests for tokenload's request templates and answer parsers, against the daemon's own parsers
// and encoders: what tokenload sends must parse as the daemon reads it, and what the daemon
// writes must parse as tokenload reads it, in one piece or byte by byte.
#include "tools/load_wire.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "base/uuid.h"
#include "daemon/binary_protocol.h"
#include "daemon/http.h"
#include "daemon/text_protocol.h"

using namespace tokend::tools;
using tokend::Uuid;
using tokend::daemon::ParseStatus;
using tokend::daemon::VerifyAnswer;
using tokend::verifier::LoginType;
using tokend::verifier::Reason;

namespace {

const std::string kToken = "a1B2c3D4e5-Xq9Zr8Ys7Wt6Vu5Ts4Rq3P";
const Wire kWires[] = {Wire::Binary, Wire::Text, Wire::Http};

std::string request(Wire w, std::string_view permission, uint64_t id = 7) {
  auto t = makeVerifyTemplate(w, permission);
  REQUIRE(t);
  std::string out;
  appendRequest(out, *t, kToken.data(), id);
  return out;
}

// The daemon's view of one request: token and permission.
std::pair<std::string, std::string> asDaemonReads(Wire w, const std::string& bytes) {
  switch (w) {
    case Wire::Binary: {
      auto f = tokend::daemon::parseFrame(bytes);
      REQUIRE(f.status == ParseStatus::Complete);
      REQUIRE(f.consumed == bytes.size());
      CHECK(f.frame.header.requestId == 7);
      auto q = tokend::daemon::decodeVerify(f.frame.payload);
      REQUIRE(q);
      return {std::string(q->token), std::string(q->permission)};
    }
    case Wire::Text: {
      auto p = tokend::daemon::parseTextLine(bytes);
      REQUIRE(p.status == ParseStatus::Complete);
      REQUIRE(p.consumed == bytes.size());
      REQUIRE(p.request.command == tokend::daemon::TextCommand::Verify);
      return {std::string(p.request.query.token), std::string(p.request.query.permission)};
    }
    case Wire::Http: {
      tokend::daemon::HttpRequest req;
      auto p = tokend::daemon::parseHttpRequest(bytes, req);
      REQUIRE(p.status == ParseStatus::Complete);
      REQUIRE(p.consumed == bytes.size());
      CHECK(req.keepAlive);
      CHECK(req.path == "/v1/verify");
      tokend::daemon::DecodeBuffer scratch;
      auto q = tokend::daemon::extractVerifyQuery(req, scratch);
      REQUIRE(q);
      return {std::string(q->token), std::string(q->permission)};
    }
  }
  return {};
}

VerifyAnswer answerOf(Reason r) {
  VerifyAnswer a;
  a.reason = r;
  if (r == Reason::Ok) {
    a.userId = *Uuid::parse("3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    a.username = "alice";
    a.tokenId = std::string_view(kToken).substr(0, 10);
    a.loginType = LoginType::Token;
    a.expiresAt = 1767225600;
  }
  return a;
}

// What the daemon writes for one verdict.
std::string daemonAnswer(Wire w, Reason r, uint64_t id = 7) {
  std::string out;
  VerifyAnswer a = answerOf(r);
  switch (w) {
    case Wire::Binary:
      REQUIRE(tokend::daemon::encodeVerifyResult(out, id, a));
      break;
    case Wire::Text:
      tokend::daemon::appendTextAnswer(out, a);
      break;
    case Wire::Http:
      tokend::daemon::appendVerifyResponse(out, a, true);
      break;
  }
  return out;
}

}  // namespace

TEST_SUITE("LoadWire") {
  TEST_CASE("requests parse as the daemon reads them, with and without a permission") {
    for (Wire w : kWires) {
      CAPTURE(wireName(w));
      for (std::string_view perm : {"", "workspace:read", "template:delete"}) {
        auto [token, permission] = asDaemonReads(w, request(w, perm));
        CHECK(token == kToken);
        CHECK(permission == perm);
      }
    }
  }

  TEST_CASE("appending patches the token and the binary request id in place") {
    auto t = makeVerifyTemplate(Wire::Binary, "workspace:read");
    REQUIRE(t);
    std::string out;
    appendRequest(out, *t, kToken.data(), 1);
    appendRequest(out, *t, kToken.data(), 0x0102030405060708ull);
    auto first = tokend::daemon::parseFrame(out);
    REQUIRE(first.status == ParseStatus::Complete);
    CHECK(first.frame.header.requestId == 1);
    auto second = tokend::daemon::parseFrame(std::string_view(out).substr(first.consumed));
    REQUIRE(second.status == ParseStatus::Complete);
    CHECK(second.frame.header.requestId == 0x0102030405060708ull);
    CHECK(out.size() == 2 * t->bytes.size());
  }

  TEST_CASE("a text permission with blanks is refused") {
    CHECK_FALSE(makeVerifyTemplate(Wire::Text, "workspace:read extra"));
  }

  TEST_CASE("HTTP percent-encodes what a query value cannot hold") {
    auto t = makeVerifyTemplate(Wire::Http, "a b&c");
    REQUIRE(t);
    CHECK(t->bytes.find("?perm=a%20b%26c ") != std::string::npos);
  }

  TEST_CASE("every verdict the daemon writes parses back, whole and byte by byte") {
    for (Wire w : kWires) {
      for (int r = 0; r < tokend::verifier::kReasonCount; ++r) {
        auto reason = static_cast<Reason>(r);
        CAPTURE(wireName(w));
        CAPTURE(tokend::verifier::reasonName(reason));
        std::string bytes = daemonAnswer(w, reason);
        for (size_t cut = 0; cut < bytes.size(); ++cut) {
          Answer part = parseAnswer(w, std::string_view(bytes).substr(0, cut));
          REQUIRE(part.status == AnswerStatus::NeedMore);
        }
        Answer a = parseAnswer(w, bytes);
        REQUIRE(a.status == AnswerStatus::Verdict);
        CHECK(a.consumed == bytes.size());
        CHECK(a.reason == reason);
        CHECK_FALSE(a.closes);
        if (reason == Reason::Ok) CHECK(a.tokenId == kToken.substr(0, 10));
        if (w == Wire::Binary) CHECK(a.requestId == 7);
      }
    }
  }

  TEST_CASE("pipelined answers parse one after the other") {
    for (Wire w : kWires) {
      CAPTURE(wireName(w));
      std::string bytes = daemonAnswer(w, Reason::Ok, 1) + daemonAnswer(w, Reason::Expired, 2) +
                          daemonAnswer(w, Reason::Scope, 3);
      std::string_view rest = bytes;
      std::vector<Reason> seen;
      while (!rest.empty()) {
        Answer a = parseAnswer(w, rest);
        REQUIRE(a.status == AnswerStatus::Verdict);
        seen.push_back(a.reason);
        rest.remove_prefix(a.consumed);
      }
      CHECK(seen == std::vector<Reason>{Reason::Ok, Reason::Expired, Reason::Scope});
    }
  }

  TEST_CASE("error answers are refusals that keep the stream in step") {
    std::string text;
    tokend::daemon::appendTextError(text, "unknown command");
    Answer t = parseAnswer(Wire::Text, text + "PONG\n");
    CHECK(t.status == AnswerStatus::Refused);
    CHECK(t.consumed == text.size());

    std::string bin;
    tokend::daemon::encodeError(bin, 9, tokend::daemon::ErrorCode::BadPayload, "bad payload");
    Answer b = parseAnswer(Wire::Binary, bin);
    CHECK(b.status == AnswerStatus::Refused);
    CHECK(b.consumed == bin.size());
    CHECK(b.requestId == 9);
    CHECK_FALSE(b.closes);
    bin.clear();
    tokend::daemon::encodeError(bin, 0, tokend::daemon::ErrorCode::BadFrame, "bad frame");
    CHECK(parseAnswer(Wire::Binary, bin).closes);

    std::string http;
    tokend::daemon::appendJsonError(http, 404, false, "Not Found", "no such endpoint");
    Answer h = parseAnswer(Wire::Http, http);
    CHECK(h.status == AnswerStatus::Refused);
    CHECK(h.consumed == http.size());
    CHECK(h.closes);
  }

  TEST_CASE("an OK line ending in owned is a verdict; other trailing words are not") {
    Answer a = parseAnswer(
        Wire::Text,
        "OK 3f2504e0-4f89-41d3-9a0c-0305e82c3301 mia abcdefghij token 1700000000 owned\n");
    CHECK(a.status == AnswerStatus::Verdict);
    CHECK(a.reason == Reason::Ok);
    CHECK(a.tokenId == "abcdefghij");
    CHECK(parseAnswer(Wire::Text,
                      "OK 3f2504e0-4f89-41d3-9a0c-0305e82c3301 mia abcdefghij token 1700000000 "
                      "mine\n")
              .status == AnswerStatus::Refused);
  }

  TEST_CASE("answers that disagree with themselves are refused") {
    CHECK(parseAnswer(Wire::Text, "DENY expired 403\n").status == AnswerStatus::Refused);
    CHECK(parseAnswer(Wire::Text, "DENY nonsense 401\n").status == AnswerStatus::Refused);
    CHECK(parseAnswer(Wire::Text, "DENY ok 200\n").status == AnswerStatus::Refused);
    CHECK(parseAnswer(Wire::Text, "OK a b\n").status == AnswerStatus::Refused);
    std::string http = daemonAnswer(Wire::Http, Reason::Expired);
    http.replace(http.find("401"), 3, "403");
    CHECK(parseAnswer(Wire::Http, http).status == AnswerStatus::Refused);
  }

  TEST_CASE("bytes that are no answer break the stream") {
    CHECK(parseAnswer(Wire::Binary, "GET / HTTP/1.1\r\n").status == AnswerStatus::Broken);
    CHECK(parseAnswer(Wire::Http, "HTTX/1.1 200 OK\r\n\r\n").status == AnswerStatus::Broken);
    CHECK(parseAnswer(Wire::Http, "HTTP/1.1 200 OK\r\nX-Tokend-Reason: ok\r\n\r\n").status ==
          AnswerStatus::Broken);  // no Content-Length
    CHECK(parseAnswer(Wire::Text, std::string(5000, 'x')).status == AnswerStatus::Broken);
  }
}
