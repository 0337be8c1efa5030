// The binary protocol: versioned, little-endian frames with request ids, for libtokend and
// tokenload. docs/protocol.md is the full description; this header is the reference for layouts.
//
// Frame = 16-byte header + payload:
//   offset size  field
//   0      1     magic       0xD7 (>= 0x80, so no text or HTTP request starts like a frame)
//   1      1     version     1
//   2      1     opcode      Opcode
//   3      1     flags       0 (version 1 defines none; a frame with any bit set is refused)
//   4      4     length      u32, payload bytes, at most kMaxFramePayload
//   8      8     request id  u64, chosen by the client, echoed in the answer
//   16     ...   payload
// Strings in payloads ("str16") are a u16 byte count followed by that many bytes, no terminator.
//
// Both directions are here (the daemon decodes requests and encodes answers; libtokend and
// tokenload do the reverse) and nothing depends on sockets: SHM_GRANTED's file descriptor travels
// beside the frame (SCM_RIGHTS), which is the caller's business.
//
// Decoders never read out of bounds and never allocate: decoded views point into the payload.
// Encoders append to the caller's string and allocate only when it must grow; a failing encoder
// leaves `out` as it was.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/result.h"
#include "daemon/query.h"

namespace tokend::daemon {

inline constexpr uint8_t kFrameMagic = 0xD7;
inline constexpr uint8_t kBinaryVersion = 1;  // the only version this code speaks
inline constexpr size_t kFrameHeaderSize = 16;
inline constexpr size_t kMaxFramePayload = 65536;

enum class Opcode : uint8_t {
  Hello = 0x01,         // both directions: version and feature exchange
  Ping = 0x02,          // client -> server, empty
  Pong = 0x03,          // server -> client, empty
  Verify = 0x10,        // client -> server: VerifyQuery
  VerifyResult = 0x11,  // server -> client: VerifyResult
  ShmAttach = 0x20,     // client -> server, empty: asks for the shared-memory segment
  ShmGranted = 0x21,    // server -> client: ShmGrant, the segment's fd attached with SCM_RIGHTS
  UsageReport = 0x30,   // client -> server: (token id, last used) pairs seen on the fast path
  UsageAck = 0x31,      // server -> client: u32 entries accepted
  Error = 0x7f,         // server -> client: ErrorCode and message
};

// Whether `op` is one this version defines (either direction).
bool isKnownOpcode(Opcode op);
std::string_view opcodeName(Opcode op);

// ERROR frame codes. The first three mean the framing is broken: the server sends the ERROR with
// request id 0 and closes. The others answer one request; the connection stays usable.
enum class ErrorCode : uint16_t {
  BadFrame = 1,            // wrong magic, flags set: closes
  UnsupportedVersion = 2,  // frame version not spoken: closes
  FrameTooLarge = 3,       // length over kMaxFramePayload: closes
  UnknownOpcode = 4,       // not an opcode of this version, or not one a server accepts
  BadPayload = 5,          // a payload that does not decode (truncated field, trailing bytes...)
  NotPermitted = 6,        // SHM_ATTACH from a peer not in --shm-allow-uid/--shm-allow-gid
  Unavailable = 7,         // the feature is off (no segment)
  Internal = 8,            // the daemon failed; the request may be retried
};
std::string_view errorCodeName(ErrorCode code);

struct FrameHeader {
  uint8_t version = kBinaryVersion;
  Opcode opcode = Opcode::Ping;
  uint8_t flags = 0;
  uint32_t length = 0;  // payload bytes
  uint64_t requestId = 0;
};

struct Frame {
  FrameHeader header;
  std::string_view payload;  // points into the input
};

struct FrameParse {
  ParseStatus status = ParseStatus::NeedMore;
  size_t consumed = 0;                    // Complete: header + payload
  Frame frame;                            // Complete
  ErrorCode error = ErrorCode::BadFrame;  // Error: what to send (request id 0) before closing
  std::string_view message;               // Error: static storage
};

// Finds the frame at the start of `in`. Checks magic, version, flags and length as soon as their
// bytes are there, so a broken stream is refused without waiting for more; a well-framed frame
// with an unknown opcode is Complete (answer ERROR UnknownOpcode and go on).
FrameParse parseFrame(std::string_view in);

// --- Payloads --------------------------------------------------------------------------------

// Feature bits of HELLO.
inline constexpr uint32_t kFeatureShm = 1u << 0;          // SHM_ATTACH is served
inline constexpr uint32_t kFeatureUsageReport = 1u << 1;  // USAGE_REPORT is accepted
// VERIFY_RESULT ends in a u8 of grant flags (kGrantOwned). It changes the answer's layout, so the
// server sends the byte only to a connection whose HELLO asked for it, and offers the bit back
// only then; a client that did not ask (libtokend before it, tokenload) gets the 1.0 layout.
inline constexpr uint32_t kFeatureGrantFlags = 1u << 2;

// HELLO: u16 version, u16 reserved (0), u32 features, u32 max payload, str16 software.
struct Hello {
  uint16_t version = kBinaryVersion;       // client: highest it speaks; server: the one both use
  uint32_t features = 0;                   // client: wanted; server: offered to this peer
  uint32_t maxPayload = kMaxFramePayload;  // largest payload the sender accepts
  std::string_view software;               // e.g. "tokend/0.1.0", informative, <= 255 bytes sent
};

// VERIFY: str16 token, str16 permission, str16 object, str16 owner (empty = absent).
// VERIFY_RESULT (fixed part first, 28 bytes, then the strings):
//   u8 reason (verifier::Reason), u8 login type (0 token, 1 password, 2 oidc, 3 github),
//   u16 http status, i64 expires_at, u8[16] user id, str16 username, str16 token id,
//   and with kFeatureGrantFlags negotiated: u8 grant flags (kGrantOwned; other bits 0).
inline constexpr uint8_t kGrantOwned = 1u << 0;  // answer.owned: the grant rests on the owner
struct VerifyResult {
  VerifyAnswer answer;  // username and tokenId point into the payload
  uint16_t httpStatus = 0;
};

// SHM_GRANTED: u32 layout version, u32 reserved (0), u64 segment size in bytes.
struct ShmGrant {
  uint32_t layoutVersion = 0;
  uint64_t size = 0;
};

// USAGE_REPORT: u32 count, then count entries of u8[10] token id + i64 last used (Unix seconds).
inline constexpr size_t kUsageTokenIdSize = verifier::kTokenIdLength;
inline constexpr size_t kUsageEntrySize = kUsageTokenIdSize + 8;
inline constexpr size_t kMaxUsageEntries = (kMaxFramePayload - 4) / kUsageEntrySize;

struct UsageEntry {
  std::string_view tokenId;  // kUsageTokenIdSize bytes
  int64_t lastUsed = 0;
};

// A decoded USAGE_REPORT, read in place: entry(i) for i < count.
struct UsageReport {
  uint32_t count = 0;
  std::string_view entries;  // count * kUsageEntrySize bytes
  UsageEntry entry(size_t i) const;
};

// ERROR: u16 code, str16 message.
struct ErrorFrame {
  ErrorCode code = ErrorCode::Internal;
  std::string_view message;
};

// Decoders take a frame's payload. Each refuses a truncated field, a length that runs past the
// end, trailing bytes and out-of-range enum values (Error::code -EBADMSG; answer BadPayload).
Result<Hello> decodeHello(std::string_view payload);
Result<VerifyQuery> decodeVerify(std::string_view payload);
// `grantFlags`: whether kFeatureGrantFlags was negotiated, so the grant byte must be there.
Result<VerifyResult> decodeVerifyResult(std::string_view payload, bool grantFlags = false);
Result<ShmGrant> decodeShmGranted(std::string_view payload);
Result<UsageReport> decodeUsageReport(std::string_view payload);
Result<uint32_t> decodeUsageAck(std::string_view payload);
Result<ErrorFrame> decodeError(std::string_view payload);
// PING, PONG and SHM_ATTACH carry nothing.
Result<void> decodeEmpty(std::string_view payload);

// Encoders append one whole frame.
void encodeHello(std::string& out, uint64_t requestId, const Hello& hello);
void encodePing(std::string& out, uint64_t requestId);
void encodePong(std::string& out, uint64_t requestId);
void encodeShmAttach(std::string& out, uint64_t requestId);
void encodeShmGranted(std::string& out, uint64_t requestId, const ShmGrant& grant);
void encodeUsageAck(std::string& out, uint64_t requestId, uint32_t accepted);
// The message is cut to 1024 bytes: an error answer must always be sendable.
void encodeError(std::string& out, uint64_t requestId, ErrorCode code, std::string_view message);
// Errors: a field over 65535 bytes, or a payload over kMaxFramePayload.
Result<void> encodeVerify(std::string& out, uint64_t requestId, const VerifyQuery& query);
// Errors: username or token id over 65535 bytes. The status written is httpStatus(reason).
// `grantFlags`: append the grant byte (only on a connection that negotiated kFeatureGrantFlags).
Result<void> encodeVerifyResult(std::string& out, uint64_t requestId, const VerifyAnswer& answer,
                                bool grantFlags = false);
// Errors: more than kMaxUsageEntries entries, a token id not kUsageTokenIdSize bytes.
Result<void> encodeUsageReport(std::string& out, uint64_t requestId,
                               std::span<const UsageEntry> entries);

// The 16 header bytes for a frame (for callers that build payloads themselves).
void appendFrameHeader(std::string& out, Opcode opcode, uint64_t requestId, uint32_t length);

}  // namespace tokend::daemon
