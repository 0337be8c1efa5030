// The binary protocol's frame parser and payload codecs.
#include "daemon/binary_protocol.h"

#include <cerrno>

namespace tokend::daemon {
namespace {

constexpr size_t kMaxStr16 = 0xffff;
constexpr size_t kMaxErrorMessage = 1024;
constexpr size_t kMaxSoftware = 255;
constexpr size_t kVerifyResultFixed = 1 + 1 + 2 + 8 + 16;

uint8_t byteAt(std::string_view in, size_t i) {
  return static_cast<uint8_t>(in[i]);
}

uint64_t loadLe(std::string_view in, size_t at, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= uint64_t{byteAt(in, at + i)} << (8 * i);
  return v;
}

// Through a stack buffer and one append: a push_back per byte checks the capacity per byte, and
// every answer frame is made of these.
void storeLe(std::string& out, uint64_t v, size_t n) {
  char b[8];
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out.append(b, n);
}

void putU8(std::string& out, uint8_t v) {
  out.push_back(static_cast<char>(v));
}
void putU16(std::string& out, uint16_t v) {
  storeLe(out, v, 2);
}
void putU32(std::string& out, uint32_t v) {
  storeLe(out, v, 4);
}
void putU64(std::string& out, uint64_t v) {
  storeLe(out, v, 8);
}
void putStr16(std::string& out, std::string_view s) {
  putU16(out, static_cast<uint16_t>(s.size()));
  out.append(s);
}

// Reads a payload front to back. After any read past the end, ok() is false and every further
// read returns zeroes, so decoders check once at the end.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}

  uint8_t u8() { return static_cast<uint8_t>(take(1)); }
  uint16_t u16() { return static_cast<uint16_t>(take(2)); }
  uint32_t u32() { return static_cast<uint32_t>(take(4)); }
  uint64_t u64() { return take(8); }
  int64_t i64() { return static_cast<int64_t>(take(8)); }
  std::string_view bytes(size_t n) {
    if (!ok_ || in_.size() - pos_ < n) {
      ok_ = false;
      return {};
    }
    std::string_view v = in_.substr(pos_, n);
    pos_ += n;
    return v;
  }
  std::string_view str16() {
    size_t n = u16();
    return bytes(n);
  }
  // True when every read stayed in bounds and the payload is used up exactly.
  bool done() const { return ok_ && pos_ == in_.size(); }
  bool ok() const { return ok_; }

 private:
  uint64_t take(size_t n) {
    if (!ok_ || in_.size() - pos_ < n) {
      ok_ = false;
      return 0;
    }
    uint64_t v = loadLe(in_, pos_, n);
    pos_ += n;
    return v;
  }

  std::string_view in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

Error badPayload(std::string_view what) {
  return Error{-EBADMSG, std::string(what)};
}

FrameParse frameError(ErrorCode code, std::string_view message) {
  FrameParse p;
  p.status = ParseStatus::Error;
  p.error = code;
  p.message = message;
  return p;
}

// Reserves and writes the header; returns the offset of the length field to patch.
size_t beginFrame(std::string& out, Opcode opcode, uint64_t requestId) {
  size_t at = out.size();
  appendFrameHeader(out, opcode, requestId, 0);
  return at;
}

void finishFrame(std::string& out, size_t frameStart) {
  size_t length = out.size() - frameStart - kFrameHeaderSize;
  for (size_t i = 0; i < 4; ++i)
    out[frameStart + 4 + i] = static_cast<char>((length >> (8 * i)) & 0xff);
}

}  // namespace

bool isKnownOpcode(Opcode op) {
  switch (op) {
    case Opcode::Hello:
    case Opcode::Ping:
    case Opcode::Pong:
    case Opcode::Verify:
    case Opcode::VerifyResult:
    case Opcode::ShmAttach:
    case Opcode::ShmGranted:
    case Opcode::UsageReport:
    case Opcode::UsageAck:
    case Opcode::Error:
      return true;
  }
  return false;
}

std::string_view opcodeName(Opcode op) {
  switch (op) {
    case Opcode::Hello:
      return "HELLO";
    case Opcode::Ping:
      return "PING";
    case Opcode::Pong:
      return "PONG";
    case Opcode::Verify:
      return "VERIFY";
    case Opcode::VerifyResult:
      return "VERIFY_RESULT";
    case Opcode::ShmAttach:
      return "SHM_ATTACH";
    case Opcode::ShmGranted:
      return "SHM_GRANTED";
    case Opcode::UsageReport:
      return "USAGE_REPORT";
    case Opcode::UsageAck:
      return "USAGE_ACK";
    case Opcode::Error:
      return "ERROR";
  }
  return "UNKNOWN";
}

std::string_view errorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::BadFrame:
      return "bad_frame";
    case ErrorCode::UnsupportedVersion:
      return "unsupported_version";
    case ErrorCode::FrameTooLarge:
      return "frame_too_large";
    case ErrorCode::UnknownOpcode:
      return "unknown_opcode";
    case ErrorCode::BadPayload:
      return "bad_payload";
    case ErrorCode::NotPermitted:
      return "not_permitted";
    case ErrorCode::Unavailable:
      return "unavailable";
    case ErrorCode::Internal:
      return "internal";
  }
  return "unknown";
}

FrameParse parseFrame(std::string_view in) {
  // Each field is judged as soon as its bytes are in, so that garbage is refused at once rather
  // than after the peer has sent a whole header's worth.
  if (in.size() >= 1 && byteAt(in, 0) != kFrameMagic)
    return frameError(ErrorCode::BadFrame, "bad magic byte");
  if (in.size() >= 2 && byteAt(in, 1) != kBinaryVersion)
    return frameError(ErrorCode::UnsupportedVersion, "unsupported protocol version");
  if (in.size() >= 4 && byteAt(in, 3) != 0)
    return frameError(ErrorCode::BadFrame, "reserved flags set");
  if (in.size() >= 8 && loadLe(in, 4, 4) > kMaxFramePayload)
    return frameError(ErrorCode::FrameTooLarge, "payload over 64 KiB");
  FrameParse p;
  if (in.size() < kFrameHeaderSize) return p;
  FrameHeader& h = p.frame.header;
  h.version = byteAt(in, 1);
  h.opcode = static_cast<Opcode>(byteAt(in, 2));
  h.flags = byteAt(in, 3);
  h.length = static_cast<uint32_t>(loadLe(in, 4, 4));
  h.requestId = loadLe(in, 8, 8);
  if (in.size() - kFrameHeaderSize < h.length) return p;
  p.status = ParseStatus::Complete;
  p.consumed = kFrameHeaderSize + h.length;
  p.frame.payload = in.substr(kFrameHeaderSize, h.length);
  return p;
}

UsageEntry UsageReport::entry(size_t i) const {
  std::string_view e = entries.substr(i * kUsageEntrySize, kUsageEntrySize);
  return UsageEntry{e.substr(0, kUsageTokenIdSize),
                    static_cast<int64_t>(loadLe(e, kUsageTokenIdSize, 8))};
}

Result<Hello> decodeHello(std::string_view payload) {
  Reader r(payload);
  Hello h;
  h.version = r.u16();
  uint16_t reserved = r.u16();
  h.features = r.u32();
  h.maxPayload = r.u32();
  h.software = r.str16();
  if (!r.done()) return badPayload("malformed HELLO");
  if (reserved != 0) return badPayload("HELLO reserved field set");
  if (h.version == 0) return badPayload("HELLO version 0");
  return h;
}

Result<VerifyQuery> decodeVerify(std::string_view payload) {
  Reader r(payload);
  VerifyQuery q;
  q.token = r.str16();
  q.permission = r.str16();
  q.object = r.str16();
  q.owner = r.str16();
  if (!r.done()) return badPayload("malformed VERIFY");
  return q;
}

Result<VerifyResult> decodeVerifyResult(std::string_view payload, bool grantFlags) {
  Reader r(payload);
  VerifyResult v;
  uint8_t reason = r.u8();
  uint8_t loginType = r.u8();
  v.httpStatus = r.u16();
  v.answer.expiresAt = r.i64();
  std::string_view id = r.bytes(16);
  v.answer.username = r.str16();
  v.answer.tokenId = r.str16();
  const uint8_t grant = grantFlags ? r.u8() : 0;
  if (!r.done()) return badPayload("malformed VERIFY_RESULT");
  if ((grant & ~kGrantOwned) != 0) return badPayload("VERIFY_RESULT unknown grant flags");
  if (grant != 0 && reason != static_cast<uint8_t>(verifier::Reason::Ok))
    return badPayload("VERIFY_RESULT grant flags on a denial");
  v.answer.owned = (grant & kGrantOwned) != 0;
  if (reason >= verifier::kReasonCount) return badPayload("VERIFY_RESULT reason out of range");
  if (loginType > static_cast<uint8_t>(verifier::LoginType::Github))
    return badPayload("VERIFY_RESULT login type out of range");
  v.answer.reason = static_cast<verifier::Reason>(reason);
  v.answer.loginType = static_cast<verifier::LoginType>(loginType);
  for (size_t i = 0; i < 16; ++i) v.answer.userId.bytes[i] = byteAt(id, i);
  return v;
}

Result<ShmGrant> decodeShmGranted(std::string_view payload) {
  Reader r(payload);
  ShmGrant g;
  g.layoutVersion = r.u32();
  uint32_t reserved = r.u32();
  g.size = r.u64();
  if (!r.done()) return badPayload("malformed SHM_GRANTED");
  if (reserved != 0) return badPayload("SHM_GRANTED reserved field set");
  return g;
}

Result<UsageReport> decodeUsageReport(std::string_view payload) {
  Reader r(payload);
  UsageReport u;
  u.count = r.u32();
  if (!r.ok()) return badPayload("malformed USAGE_REPORT");
  // Compare in 64 bits: count * entry size cannot overflow there.
  if (uint64_t{u.count} * kUsageEntrySize != payload.size() - 4)
    return badPayload("USAGE_REPORT count does not match its length");
  u.entries = payload.substr(4);
  return u;
}

Result<uint32_t> decodeUsageAck(std::string_view payload) {
  Reader r(payload);
  uint32_t n = r.u32();
  if (!r.done()) return badPayload("malformed USAGE_ACK");
  return n;
}

Result<ErrorFrame> decodeError(std::string_view payload) {
  Reader r(payload);
  ErrorFrame e;
  e.code = static_cast<ErrorCode>(r.u16());
  e.message = r.str16();
  if (!r.done()) return badPayload("malformed ERROR");
  // Unknown codes are kept: a newer server may send codes this client does not know yet, and the
  // message still says what happened.
  return e;
}

Result<void> decodeEmpty(std::string_view payload) {
  if (!payload.empty()) return badPayload("payload must be empty");
  return {};
}

void appendFrameHeader(std::string& out, Opcode opcode, uint64_t requestId, uint32_t length) {
  char h[kFrameHeaderSize] = {static_cast<char>(kFrameMagic), static_cast<char>(kBinaryVersion),
                              static_cast<char>(opcode), 0};
  for (size_t i = 0; i < 4; ++i) h[4 + i] = static_cast<char>((length >> (8 * i)) & 0xff);
  for (size_t i = 0; i < 8; ++i) h[8 + i] = static_cast<char>((requestId >> (8 * i)) & 0xff);
  out.append(h, kFrameHeaderSize);
}

void encodeHello(std::string& out, uint64_t requestId, const Hello& h) {
  std::string_view software = h.software.substr(0, kMaxSoftware);
  appendFrameHeader(out, Opcode::Hello, requestId,
                    static_cast<uint32_t>(2 + 2 + 4 + 4 + 2 + software.size()));
  putU16(out, h.version);
  putU16(out, 0);
  putU32(out, h.features);
  putU32(out, h.maxPayload);
  putStr16(out, software);
}

void encodePing(std::string& out, uint64_t requestId) {
  appendFrameHeader(out, Opcode::Ping, requestId, 0);
}

void encodePong(std::string& out, uint64_t requestId) {
  appendFrameHeader(out, Opcode::Pong, requestId, 0);
}

void encodeShmAttach(std::string& out, uint64_t requestId) {
  appendFrameHeader(out, Opcode::ShmAttach, requestId, 0);
}

void encodeShmGranted(std::string& out, uint64_t requestId, const ShmGrant& g) {
  appendFrameHeader(out, Opcode::ShmGranted, requestId, 16);
  putU32(out, g.layoutVersion);
  putU32(out, 0);
  putU64(out, g.size);
}

void encodeUsageAck(std::string& out, uint64_t requestId, uint32_t accepted) {
  appendFrameHeader(out, Opcode::UsageAck, requestId, 4);
  putU32(out, accepted);
}

void encodeError(std::string& out, uint64_t requestId, ErrorCode code, std::string_view message) {
  message = message.substr(0, kMaxErrorMessage);
  appendFrameHeader(out, Opcode::Error, requestId, static_cast<uint32_t>(4 + message.size()));
  putU16(out, static_cast<uint16_t>(code));
  putStr16(out, message);
}

Result<void> encodeVerify(std::string& out, uint64_t requestId, const VerifyQuery& q) {
  const std::string_view fields[] = {q.token, q.permission, q.object, q.owner};
  size_t length = 0;
  for (std::string_view f : fields) {
    if (f.size() > kMaxStr16) return makeError("VERIFY field over 65535 bytes");
    length += 2 + f.size();
  }
  if (length > kMaxFramePayload) return makeError("VERIFY payload over 64 KiB");
  size_t start = beginFrame(out, Opcode::Verify, requestId);
  for (std::string_view f : fields) putStr16(out, f);
  finishFrame(out, start);
  return {};
}

Result<void> encodeVerifyResult(std::string& out, uint64_t requestId, const VerifyAnswer& a,
                                bool grantFlags) {
  if (a.username.size() > kMaxStr16 || a.tokenId.size() > kMaxStr16 ||
      kVerifyResultFixed + 5 + a.username.size() + a.tokenId.size() > kMaxFramePayload)
    return makeError("VERIFY_RESULT field too long");
  size_t start = beginFrame(out, Opcode::VerifyResult, requestId);
  putU8(out, static_cast<uint8_t>(a.reason));
  putU8(out, static_cast<uint8_t>(a.loginType));
  putU16(out, static_cast<uint16_t>(verifier::httpStatus(a.reason)));
  putU64(out, static_cast<uint64_t>(a.expiresAt));
  out.append(reinterpret_cast<const char*>(a.userId.bytes.data()), a.userId.bytes.size());
  putStr16(out, a.username);
  putStr16(out, a.tokenId);
  if (grantFlags) putU8(out, a.reason == verifier::Reason::Ok && a.owned ? kGrantOwned : 0);
  finishFrame(out, start);
  return {};
}

Result<void> encodeUsageReport(std::string& out, uint64_t requestId,
                               std::span<const UsageEntry> entries) {
  if (entries.size() > kMaxUsageEntries) return makeError("too many USAGE_REPORT entries");
  for (const UsageEntry& e : entries)
    if (e.tokenId.size() != kUsageTokenIdSize)
      return makeError("USAGE_REPORT token id of the wrong length");
  appendFrameHeader(out, Opcode::UsageReport, requestId,
                    static_cast<uint32_t>(4 + entries.size() * kUsageEntrySize));
  putU32(out, static_cast<uint32_t>(entries.size()));
  for (const UsageEntry& e : entries) {
    out.append(e.tokenId);
    putU64(out, static_cast<uint64_t>(e.lastUsed));
  }
  return {};
}

}  // namespace tokend::daemon
