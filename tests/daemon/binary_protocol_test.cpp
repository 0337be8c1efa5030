// Tests for the binary protocol's frame parser and payload codecs, both directions.
#include "daemon/binary_protocol.h"

#include <doctest/doctest.h>

#include "tests/support/alloc_counter.h"

#include <cstdlib>
#include <new>

#include <array>
#include <string>
#include <vector>

#include "base/uuid.h"

using namespace tokend::daemon;
using tokend::Uuid;
using tokend::verifier::LoginType;
using tokend::verifier::Reason;

namespace {

// Builds a frame byte by byte, independently of the encoders, to pin the documented layout.
std::string rawFrame(uint8_t opcode, uint64_t id, std::string_view payload, uint8_t magic = 0xD7,
                     uint8_t version = 1, uint8_t flags = 0) {
  std::string f;
  f.push_back(static_cast<char>(magic));
  f.push_back(static_cast<char>(version));
  f.push_back(static_cast<char>(opcode));
  f.push_back(static_cast<char>(flags));
  uint32_t n = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) f.push_back(static_cast<char>(n >> (8 * i)));
  for (int i = 0; i < 8; ++i) f.push_back(static_cast<char>(id >> (8 * i)));
  f.append(payload);
  return f;
}

std::string str16(std::string_view s) {
  std::string o;
  o.push_back(static_cast<char>(s.size() & 0xff));
  o.push_back(static_cast<char>(s.size() >> 8));
  o.append(s);
  return o;
}

Frame parseWhole(std::string_view in) {
  FrameParse p = parseFrame(in);
  REQUIRE(p.status == ParseStatus::Complete);
  CHECK(p.consumed == in.size());
  return p.frame;
}

}  // namespace

TEST_SUITE("BinaryFrames") {
  TEST_CASE("the header layout is magic, version, opcode, flags, length, request id") {
    std::string out;
    encodePing(out, 0x0102030405060708ull);
    CHECK(out ==
          std::string("\xD7\x01\x02\x00\x00\x00\x00\x00\x08\x07\x06\x05\x04\x03\x02\x01", 16));
    Frame f = parseWhole(out);
    CHECK(f.header.opcode == Opcode::Ping);
    CHECK(f.header.requestId == 0x0102030405060708ull);
    CHECK(f.header.length == 0);
    CHECK(f.payload.empty());
  }

  TEST_CASE("a truncated frame needs more at every split point, then parses the same") {
    std::string out;
    REQUIRE(encodeVerify(out, 42, VerifyQuery{"tok", "workspace:read", "", "owner"}));
    for (size_t cut = 0; cut < out.size(); ++cut) {
      CAPTURE(cut);
      CHECK(parseFrame(std::string_view(out).substr(0, cut)).status == ParseStatus::NeedMore);
    }
    Frame f = parseWhole(out);
    CHECK(f.header.requestId == 42);
    auto q = decodeVerify(f.payload);
    REQUIRE(q);
    CHECK(q->token == "tok");
    CHECK(q->permission == "workspace:read");
    CHECK(q->object.empty());
    CHECK(q->owner == "owner");
  }

  TEST_CASE("pipelined frames are parsed in order") {
    std::string in;
    encodePing(in, 1);
    REQUIRE(encodeVerify(in, 2, VerifyQuery{"a", "", "", ""}));
    encodeShmAttach(in, 3);
    REQUIRE(encodeVerify(in, 4, VerifyQuery{"b", "", "", ""}));
    in.resize(in.size() - 1);
    std::string_view rest = in;
    std::vector<uint64_t> ids;
    for (;;) {
      FrameParse p = parseFrame(rest);
      if (p.status != ParseStatus::Complete) {
        CHECK(p.status == ParseStatus::NeedMore);
        break;
      }
      ids.push_back(p.frame.header.requestId);
      rest.remove_prefix(p.consumed);
    }
    CHECK(ids == std::vector<uint64_t>{1, 2, 3});
  }

  TEST_CASE("a wrong magic byte is refused from the first byte") {
    FrameParse p = parseFrame("\x80");
    CHECK(p.status == ParseStatus::Error);
    CHECK(p.error == ErrorCode::BadFrame);
    CHECK(parseFrame(rawFrame(2, 1, "", 0xD6)).status == ParseStatus::Error);
  }

  TEST_CASE("an unknown version is refused from the second byte") {
    for (uint8_t v : {0, 2, 255}) {
      CAPTURE(int(v));
      FrameParse p = parseFrame(rawFrame(2, 1, "", 0xD7, v).substr(0, 2));
      CHECK(p.status == ParseStatus::Error);
      CHECK(p.error == ErrorCode::UnsupportedVersion);
    }
  }

  TEST_CASE("set flags are refused") {
    FrameParse p = parseFrame(rawFrame(2, 1, "", 0xD7, 1, 0x01).substr(0, 4));
    CHECK(p.status == ParseStatus::Error);
    CHECK(p.error == ErrorCode::BadFrame);
  }

  TEST_CASE("a payload of 64 KiB is accepted, more is refused before it arrives") {
    std::string big = rawFrame(0x10, 7, std::string(kMaxFramePayload, 'x'));
    CHECK(parseWhole(big).header.length == kMaxFramePayload);
    std::string header = rawFrame(0x10, 7, "").substr(0, 4);
    for (uint32_t n : {uint32_t{kMaxFramePayload + 1}, 0xffffffffu}) {
      std::string h = header;
      for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>(n >> (8 * i)));
      FrameParse p = parseFrame(h);
      CHECK(p.status == ParseStatus::Error);
      CHECK(p.error == ErrorCode::FrameTooLarge);
    }
  }

  TEST_CASE("an unknown opcode is still framed, so it can be answered") {
    std::string frame = rawFrame(0x55, 9, "abc");
    Frame f = parseWhole(frame);
    CHECK_FALSE(isKnownOpcode(f.header.opcode));
    CHECK(f.payload == "abc");
    CHECK(isKnownOpcode(Opcode::Verify));
    CHECK(opcodeName(f.header.opcode) == "UNKNOWN");
    CHECK(opcodeName(Opcode::ShmGranted) == "SHM_GRANTED");
  }
}

TEST_SUITE("BinaryPayloads") {
  TEST_CASE("VERIFY: four str16 fields in order") {
    std::string payload = str16("tok") + str16("workspace:read") + str16("workspace:*") + str16("");
    std::string frame = rawFrame(0x10, 5, payload);
    Frame f = parseWhole(frame);
    auto q = decodeVerify(f.payload);
    REQUIRE(q);
    CHECK(q->token == "tok");
    CHECK(q->permission == "workspace:read");
    CHECK(q->object == "workspace:*");
    CHECK(q->owner.empty());

    std::string out;
    REQUIRE(encodeVerify(out, 5, *q));
    CHECK(out == frame);
  }

  TEST_CASE("VERIFY: truncated fields, overlong lengths and trailing bytes are refused") {
    std::string good = str16("tok") + str16("p") + str16("o") + str16("w");
    for (size_t cut = 0; cut < good.size(); ++cut) {
      CAPTURE(cut);
      auto r = decodeVerify(std::string_view(good).substr(0, cut));
      CHECK_FALSE(r);
      if (!r) CHECK(r.error().code == -EBADMSG);
    }
    CHECK_FALSE(decodeVerify(good + "x"));
    std::string overlong = good;
    overlong[0] = 0x7f;  // token length 127, past the end
    CHECK_FALSE(decodeVerify(overlong));
    CHECK(decodeVerify(good));
  }

  TEST_CASE("VERIFY encoder refuses fields that do not fit") {
    std::string out = "keep";
    std::string huge(70000, 'a');
    CHECK_FALSE(encodeVerify(out, 1, VerifyQuery{huge, "", "", ""}));
    std::string big(30000, 'a');
    CHECK_FALSE(encodeVerify(out, 1, VerifyQuery{big, big, big, ""}));
    CHECK(out == "keep");
  }

  TEST_CASE("VERIFY_RESULT round-trips and has the documented layout") {
    VerifyAnswer a;
    a.reason = Reason::Ok;
    a.userId = *Uuid::parse("3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    a.username = "alice";
    a.tokenId = "abcdefghij";
    a.loginType = LoginType::Github;
    a.expiresAt = -2;
    std::string out;
    REQUIRE(encodeVerifyResult(out, 77, a));
    Frame f = parseWhole(out);
    CHECK(f.header.opcode == Opcode::VerifyResult);
    CHECK(f.header.requestId == 77);
    std::string expect = std::string("\x00\x03\xC8\x00", 4) +
                         std::string(8, '\xff').replace(0, 1, "\xfe") +
                         std::string(reinterpret_cast<const char*>(a.userId.bytes.data()), 16) +
                         str16("alice") + str16("abcdefghij");
    CHECK(f.payload == expect);
    auto r = decodeVerifyResult(f.payload);
    REQUIRE(r);
    CHECK(r->httpStatus == 200);
    CHECK(r->answer.reason == Reason::Ok);
    CHECK(r->answer.userId == a.userId);
    CHECK(r->answer.username == "alice");
    CHECK(r->answer.tokenId == "abcdefghij");
    CHECK(r->answer.loginType == LoginType::Github);
    CHECK(r->answer.expiresAt == -2);
  }

  TEST_CASE("VERIFY_RESULT carries each reason's numeric value and status") {
    for (int i = 0; i < tokend::verifier::kReasonCount; ++i) {
      VerifyAnswer a;
      a.reason = static_cast<Reason>(i);
      std::string out;
      REQUIRE(encodeVerifyResult(out, 1, a));
      std::string_view payload = std::string_view(out).substr(kFrameHeaderSize);
      CHECK(static_cast<uint8_t>(payload[0]) == i);
      auto r = decodeVerifyResult(payload);
      REQUIRE(r);
      CHECK(r->answer.reason == a.reason);
      CHECK(r->httpStatus == tokend::verifier::httpStatus(a.reason));
    }
  }

  TEST_CASE("VERIFY_RESULT refuses out-of-range enums and truncation") {
    VerifyAnswer a;
    a.username = "u";
    std::string out;
    REQUIRE(encodeVerifyResult(out, 1, a));
    std::string payload = out.substr(kFrameHeaderSize);
    CHECK(decodeVerifyResult(payload));
    std::string badReason = payload;
    badReason[0] = static_cast<char>(tokend::verifier::kReasonCount);
    CHECK_FALSE(decodeVerifyResult(badReason));
    std::string badLogin = payload;
    badLogin[1] = 4;
    CHECK_FALSE(decodeVerifyResult(badLogin));
    for (size_t cut = 0; cut < payload.size(); ++cut) {
      CAPTURE(cut);
      CHECK_FALSE(decodeVerifyResult(std::string_view(payload).substr(0, cut)));
    }
    CHECK_FALSE(decodeVerifyResult(payload + std::string(1, '\0')));
  }

  TEST_CASE("with grant flags negotiated VERIFY_RESULT ends in the grant byte, else as before") {
    VerifyAnswer a;
    a.reason = Reason::Ok;
    a.username = "alice";
    a.tokenId = "abcdefghij";
    a.owned = true;
    std::string plain, flagged;
    REQUIRE(encodeVerifyResult(plain, 1, a));
    REQUIRE(encodeVerifyResult(flagged, 1, a, true));
    std::string_view p = std::string_view(plain).substr(kFrameHeaderSize);
    std::string_view f = std::string_view(flagged).substr(kFrameHeaderSize);
    // The 1.0 layout is unchanged (what clients that did not ask decode), the flagged one is it
    // plus one byte: kGrantOwned.
    CHECK(f.size() == p.size() + 1);
    CHECK(f.substr(0, p.size()) == p);
    CHECK(static_cast<uint8_t>(f.back()) == kGrantOwned);
    auto r = decodeVerifyResult(f, true);
    REQUIRE(r);
    CHECK(r->answer.owned);
    auto old = decodeVerifyResult(p);
    REQUIRE(old);
    CHECK_FALSE(old->answer.owned);
    // Each side refuses the other's layout: the feature bit decides, not a guess.
    CHECK_FALSE(decodeVerifyResult(f));
    CHECK_FALSE(decodeVerifyResult(p, true));

    a.owned = false;
    std::string site;
    REQUIRE(encodeVerifyResult(site, 1, a, true));
    CHECK(site.back() == '\0');
    auto s = decodeVerifyResult(std::string_view(site).substr(kFrameHeaderSize), true);
    REQUIRE(s);
    CHECK_FALSE(s->answer.owned);

    std::string unknown(f);
    unknown.back() = 2;
    CHECK_FALSE(decodeVerifyResult(unknown, true));
    // A denial is never owned.
    a.reason = Reason::Role;
    a.owned = true;
    std::string deny;
    REQUIRE(encodeVerifyResult(deny, 1, a, true));
    CHECK(deny.back() == '\0');
    std::string forged = deny.substr(kFrameHeaderSize);
    forged.back() = static_cast<char>(kGrantOwned);
    CHECK_FALSE(decodeVerifyResult(forged, true));
  }

  TEST_CASE("HELLO round-trips and cuts the software name") {
    std::string out;
    Hello h;
    h.version = 1;
    h.features = kFeatureShm | kFeatureUsageReport;
    h.maxPayload = 4096;
    h.software = "libtokend/0.1.0";
    encodeHello(out, 0, h);
    Frame f = parseWhole(out);
    CHECK(f.header.opcode == Opcode::Hello);
    CHECK(f.payload == std::string("\x01\x00\x00\x00\x03\x00\x00\x00\x00\x10\x00\x00", 12) +
                           str16("libtokend/0.1.0"));
    auto d = decodeHello(f.payload);
    REQUIRE(d);
    CHECK(d->version == 1);
    CHECK(d->features == 3);
    CHECK(d->maxPayload == 4096);
    CHECK(d->software == "libtokend/0.1.0");

    std::string longName(1000, 'n');
    h.software = longName;
    out.clear();
    encodeHello(out, 0, h);
    CHECK(decodeHello(parseWhole(out).payload)->software.size() == 255);
  }

  TEST_CASE("HELLO refuses version 0, reserved bits and truncation") {
    std::string good =
        std::string("\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00", 12) + str16("");
    CHECK(decodeHello(good));
    std::string v0 = good;
    v0[0] = 0;
    CHECK_FALSE(decodeHello(v0));
    std::string reserved = good;
    reserved[2] = 1;
    CHECK_FALSE(decodeHello(reserved));
    CHECK_FALSE(decodeHello(good.substr(0, 13)));
    CHECK_FALSE(decodeHello(good + "x"));
  }

  TEST_CASE("SHM_GRANTED round-trips") {
    std::string out;
    encodeShmGranted(out, 3, ShmGrant{2, 1ull << 33});
    Frame f = parseWhole(out);
    CHECK(f.header.opcode == Opcode::ShmGranted);
    CHECK(f.payload.size() == 16);
    auto g = decodeShmGranted(f.payload);
    REQUIRE(g);
    CHECK(g->layoutVersion == 2);
    CHECK(g->size == (1ull << 33));
    CHECK_FALSE(decodeShmGranted(f.payload.substr(0, 15)));
    std::string reserved(f.payload);
    reserved[4] = 1;
    CHECK_FALSE(decodeShmGranted(reserved));
  }

  TEST_CASE("PING, PONG and SHM_ATTACH must be empty") {
    std::string out;
    encodePong(out, 1);
    encodeShmAttach(out, 2);
    FrameParse a = parseFrame(out);
    REQUIRE(a.status == ParseStatus::Complete);
    CHECK(a.frame.header.opcode == Opcode::Pong);
    CHECK(parseWhole(std::string_view(out).substr(a.consumed)).header.opcode == Opcode::ShmAttach);
    CHECK(decodeEmpty(""));
    CHECK_FALSE(decodeEmpty("x"));
  }

  TEST_CASE("USAGE_REPORT: a count and fixed entries, read in place") {
    std::array<UsageEntry, 3> entries{UsageEntry{"aaaaaaaaaa", 1},
                                      UsageEntry{"bbbbbbbbbb", 1700000000},
                                      UsageEntry{"cccccccccc", -1}};
    std::string out;
    REQUIRE(encodeUsageReport(out, 8, entries));
    Frame f = parseWhole(out);
    CHECK(f.header.length == 4 + 3 * 18);
    auto u = decodeUsageReport(f.payload);
    REQUIRE(u);
    REQUIRE(u->count == 3);
    for (size_t i = 0; i < 3; ++i) {
      CHECK(u->entry(i).tokenId == entries[i].tokenId);
      CHECK(u->entry(i).lastUsed == entries[i].lastUsed);
    }
    CHECK(decodeUsageReport(std::string(4, '\0')));
  }

  TEST_CASE("USAGE_REPORT refuses a count that does not match its length") {
    std::array<UsageEntry, 2> entries{UsageEntry{"aaaaaaaaaa", 1}, UsageEntry{"bbbbbbbbbb", 2}};
    std::string out;
    REQUIRE(encodeUsageReport(out, 8, entries));
    std::string payload = out.substr(kFrameHeaderSize);
    CHECK_FALSE(decodeUsageReport(payload.substr(0, payload.size() - 1)));
    CHECK_FALSE(decodeUsageReport(payload + "x"));
    CHECK_FALSE(decodeUsageReport("abc"));
    std::string huge = payload;
    huge[3] = '\xff';  // count near 2^32: must not overflow into a match
    CHECK_FALSE(decodeUsageReport(huge));
  }

  TEST_CASE("USAGE_REPORT encoder refuses bad ids and too many entries") {
    std::string out;
    std::array<UsageEntry, 1> shortId{UsageEntry{"short", 1}};
    CHECK_FALSE(encodeUsageReport(out, 1, shortId));
    std::vector<UsageEntry> many(kMaxUsageEntries + 1, UsageEntry{"aaaaaaaaaa", 1});
    CHECK_FALSE(encodeUsageReport(out, 1, many));
    CHECK(out.empty());
    many.pop_back();
    REQUIRE(encodeUsageReport(out, 1, many));
    CHECK(parseWhole(out).header.length <= kMaxFramePayload);
  }

  TEST_CASE("USAGE_ACK round-trips") {
    std::string out;
    encodeUsageAck(out, 4, 3640);
    auto n = decodeUsageAck(parseWhole(out).payload);
    REQUIRE(n);
    CHECK(*n == 3640);
    CHECK_FALSE(decodeUsageAck("abc"));
  }

  TEST_CASE("ERROR carries a code and a message, cut to 1 KiB") {
    std::string out;
    encodeError(out, 6, ErrorCode::NotPermitted, "uid 1000 may not attach the segment");
    Frame f = parseWhole(out);
    CHECK(f.header.opcode == Opcode::Error);
    auto e = decodeError(f.payload);
    REQUIRE(e);
    CHECK(e->code == ErrorCode::NotPermitted);
    CHECK(e->message == "uid 1000 may not attach the segment");
    CHECK(errorCodeName(e->code) == "not_permitted");

    out.clear();
    encodeError(out, 0, ErrorCode::Internal, std::string(5000, 'm'));
    CHECK(decodeError(parseWhole(out).payload)->message.size() == 1024);
    CHECK_FALSE(
        decodeError(std::string_view("\x01\x00\x05\x00"
                                     "ab",
                                     6)));
  }

  TEST_CASE("an ERROR with a code this side does not know still decodes") {
    auto e = decodeError(std::string("\x99\x00", 2) + str16("new"));
    REQUIRE(e);
    CHECK(static_cast<uint16_t>(e->code) == 0x99);
    CHECK(errorCodeName(e->code) == "unknown");
  }

  TEST_CASE("decoding and answering allocate nothing once the output has room") {
    std::string in;
    REQUIRE(encodeVerify(
        in, 1, VerifyQuery{"abcdefghij-0123456789abcdefghijkl", "workspace:read", "", ""}));
    encodePing(in, 2);
    std::string out;
    out.reserve(4096);
    VerifyAnswer a;
    a.reason = Reason::Ok;
    a.username = "alice";
    a.tokenId = "abcdefghij";
    bool ok = true;
    long before = tokend::test::allocations();
    for (int i = 0; i < 100; ++i) {
      out.clear();
      for (std::string_view rest = in; !rest.empty();) {
        FrameParse p = parseFrame(rest);
        if (p.status != ParseStatus::Complete) break;
        if (p.frame.header.opcode == Opcode::Verify) {
          auto q = decodeVerify(p.frame.payload);
          ok = ok && q && encodeVerifyResult(out, p.frame.header.requestId, a).has_value();
        } else {
          encodePong(out, p.frame.header.requestId);
        }
        rest.remove_prefix(p.consumed);
      }
    }
    long after = tokend::test::allocations();
    CHECK(ok);
    CHECK(after == before);
    CHECK(out.size() == kFrameHeaderSize + 28 + 2 + 5 + 2 + 10 + kFrameHeaderSize);
  }
}
