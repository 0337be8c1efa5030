// The request and answer shapes the three wire protocols share, and protocol detection.
//
// The protocol code is pure parse/encode: no sockets, no verification. It includes the verifier's
// reason and record headers for their enums only and does not link the verifier, so libtokend and
// tokenload can use the same encoders without LMDB.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "base/uuid.h"
#include "verifier/reason.h"
#include "verifier/records.h"

namespace tokend::daemon {

// One verification request, as every protocol parses it. The views point into the connection's
// input (or, for percent-decoded HTTP values, into the caller's DecodeBuffer) and stay valid until
// the caller consumes those bytes. An empty view means absent.
struct VerifyQuery {
  std::string_view token;
  std::string_view permission;  // "resource:action"
  std::string_view object;      // "type:uuid"
  std::string_view owner;       // user uuid
};

// One verification answer, as every protocol encodes it. The identity fields mean something only
// when reason == Ok; the views must outlive the encoder call only.
struct VerifyAnswer {
  verifier::Reason reason = verifier::Reason::Missing;
  Uuid userId;
  std::string_view username;
  std::string_view tokenId;
  verifier::LoginType loginType = verifier::LoginType::Token;
  int64_t expiresAt = 0;  // Unix seconds
  // Ok only: the permission was granted on the caller's word that the object belongs to the
  // token's user (an owned role permission, SPEC 6). Every protocol says so: HTTP X-Tokend-Grant:
  // owned, the text word `owned`, the binary grant flag.
  bool owned = false;
};

// SPEC 2's words for a login type. Kept here rather than calling verifier::loginTypeName so that
// the protocols do not link the verifier; the values are part of the contract and do not change.
constexpr std::string_view loginTypeWord(verifier::LoginType t) {
  switch (t) {
    case verifier::LoginType::Token:
      return "token";
    case verifier::LoginType::Password:
      return "password";
    case verifier::LoginType::Oidc:
      return "oidc";
    case verifier::LoginType::Github:
      return "github";
  }
  return "token";
}

// How the three parsers report progress: not enough bytes yet, one request complete, or input
// that cannot be answered in-band (the connection is closed after the error answer).
enum class ParseStatus : uint8_t { NeedMore, Complete, Error };

enum class Protocol : uint8_t {
  NeedMore,  // the bytes so far are a prefix of more than one possibility, or of one: wait
  Text,
  Http,
  Binary,
  Unknown,  // no protocol starts like this: answer "ERR unknown protocol" and close
};

// The most bytes detectProtocol() ever needs ("OPTIONS /").
inline constexpr size_t kMaxDetectBytes = 9;

// Tells the protocol of a connection from its first bytes, reading as few as possible: one byte
// >= 0x80 is binary; "VERIFY" or "PING" is text; "<method> /" for GET, POST, PUT, DELETE, HEAD,
// OPTIONS and PATCH is HTTP. Case-sensitive. Returns NeedMore while the input is a proper prefix of
// one of these, Unknown as soon as it is none of them.
Protocol detectProtocol(std::string_view firstBytes);

}  // namespace tokend::daemon
