// Protocol detection from a connection's first bytes.
#include "daemon/query.h"

namespace tokend::daemon {

Protocol detectProtocol(std::string_view in) {
  if (in.empty()) return Protocol::NeedMore;
  // Every binary frame starts with its magic byte, chosen >= 0x80 so that no text or HTTP request
  // (ASCII) can start like one: one byte is enough.
  if (static_cast<unsigned char>(in[0]) >= 0x80) return Protocol::Binary;

  struct Prefix {
    std::string_view bytes;
    Protocol protocol;
  };
  static constexpr Prefix kPrefixes[] = {
      {"VERIFY", Protocol::Text}, {"PING", Protocol::Text},      {"GET /", Protocol::Http},
      {"POST /", Protocol::Http}, {"PUT /", Protocol::Http},     {"DELETE /", Protocol::Http},
      {"HEAD /", Protocol::Http}, {"OPTIONS /", Protocol::Http}, {"PATCH /", Protocol::Http},
  };
  bool maybe = false;
  for (const Prefix& p : kPrefixes) {
    if (in.starts_with(p.bytes)) return p.protocol;
    if (p.bytes.starts_with(in)) maybe = true;
  }
  return maybe ? Protocol::NeedMore : Protocol::Unknown;
}

}  // namespace tokend::daemon
