// libFuzzer target: protocol detection and the text protocol's line parser and encoders.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "daemon/query.h"
#include "daemon/text_protocol.h"
#include "tests/fuzz/fuzz_support.h"

using namespace tokend::daemon;
using tokend::fuzz::require;

namespace {

bool within(std::string_view inner, std::string_view outer) {
  return inner.empty() || (inner.data() >= outer.data() &&
                           inner.data() + inner.size() <= outer.data() + outer.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  (void)detectProtocol(in.substr(0, kMaxDetectBytes));

  static std::string out;
  std::string_view rest = in;
  while (true) {
    TextParse p = parseTextLine(rest);
    if (p.status == ParseStatus::NeedMore) {
      require(rest.size() < kMaxTextLine);
      break;
    }
    out.clear();
    if (p.status == ParseStatus::Error) {
      appendTextError(out, kTextLineTooLong);
      break;
    }
    require(p.consumed > 0 && p.consumed <= rest.size() && p.consumed <= kMaxTextLine);
    require(rest[p.consumed - 1] == '\n');
    std::string_view line = rest.substr(0, p.consumed);
    // A line is judged only once its LF is in: every shorter prefix needs more.
    require(parseTextLine(line.substr(0, p.consumed - 1)).status == ParseStatus::NeedMore);
    const TextRequest& r = p.request;
    switch (r.command) {
      case TextCommand::Verify:
        require(!r.query.token.empty());
        require(within(r.query.token, line) && within(r.query.permission, line) &&
                within(r.query.object, line) && within(r.query.owner, line));
        break;
      case TextCommand::Ping:
        appendTextPong(out);
        break;
      case TextCommand::Invalid:
        require(!r.error.empty());
        appendTextError(out, r.error);
        require(out.find('\n') == out.size() - 1);
        break;
    }
    rest.remove_prefix(p.consumed);
  }
  return 0;
}
