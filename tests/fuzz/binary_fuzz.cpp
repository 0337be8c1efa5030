// libFuzzer target: the binary protocol's frame parser and every payload decoder, with
// re-encoding checks where the encoding is canonical.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/binary_protocol.h"
#include "tests/fuzz/fuzz_support.h"

using namespace tokend::daemon;
using tokend::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  static std::string out;
  static std::vector<UsageEntry> entries;

  std::string_view rest = in;
  while (true) {
    FrameParse p = parseFrame(rest);
    out.clear();
    if (p.status == ParseStatus::NeedMore) {
      require(rest.size() < kFrameHeaderSize + kMaxFramePayload);
      break;
    }
    if (p.status == ParseStatus::Error) {
      encodeError(out, 0, p.error, p.message);
      break;
    }
    require(p.consumed == kFrameHeaderSize + p.frame.payload.size());
    require(p.frame.payload.size() <= kMaxFramePayload);
    std::string_view frame = rest.substr(0, p.consumed);
    const FrameHeader& h = p.frame.header;
    std::string_view payload = p.frame.payload;

    switch (h.opcode) {
      case Opcode::Hello:
        if (auto v = decodeHello(payload); v && v->software.size() <= 255) {
          encodeHello(out, h.requestId, *v);
          require(out == frame);
        }
        break;
      case Opcode::Ping:
      case Opcode::Pong:
      case Opcode::ShmAttach:
        if (decodeEmpty(payload)) {
          encodePong(out, h.requestId);
          require(out.size() == kFrameHeaderSize);
        }
        break;
      case Opcode::Verify:
        if (auto v = decodeVerify(payload)) {
          require(encodeVerify(out, h.requestId, *v).has_value());
          require(out == frame);
        }
        break;
      case Opcode::VerifyResult:
        if (auto v = decodeVerifyResult(payload)) {
          require(encodeVerifyResult(out, h.requestId, v->answer).has_value());
          if (v->httpStatus == tokend::verifier::httpStatus(v->answer.reason))
            require(out == frame);
        }
        break;
      case Opcode::ShmGranted:
        if (auto v = decodeShmGranted(payload)) {
          encodeShmGranted(out, h.requestId, *v);
          require(out == frame);
        }
        break;
      case Opcode::UsageReport:
        if (auto v = decodeUsageReport(payload)) {
          entries.clear();
          for (size_t i = 0; i < v->count; ++i) entries.push_back(v->entry(i));
          require(encodeUsageReport(out, h.requestId, entries).has_value());
          require(out == frame);
        }
        break;
      case Opcode::UsageAck:
        if (auto v = decodeUsageAck(payload)) {
          encodeUsageAck(out, h.requestId, *v);
          require(out == frame);
        }
        break;
      case Opcode::Error:
        if (auto v = decodeError(payload); v && v->message.size() <= 1024) {
          encodeError(out, h.requestId, v->code, v->message);
          require(out == frame);
        }
        break;
      default:
        require(!isKnownOpcode(h.opcode));
        encodeError(out, h.requestId, ErrorCode::UnknownOpcode, opcodeName(h.opcode));
        break;
    }
    rest.remove_prefix(p.consumed);
  }
  return 0;
}
