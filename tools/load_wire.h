// tokenload's wire side: pre-encoded VERIFY request templates and incremental answer parsers for
// the binary, text and HTTP protocols (docs/protocol.md). No sockets, no verifier.
//
// A request is a template encoded once at start-up with a placeholder token; sending copies the
// template and patches the 33 token bytes (and, for binary frames, the request id) in place, so
// the hot path is two memcpys and no formatting. The answer parsers read what the daemon's
// encoders write and never allocate: the views they return point into the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"
#include "daemon/query.h"
#include "verifier/reason.h"

namespace tokend::tools {

enum class Wire : uint8_t { Binary, Text, Http };

// Where a binary frame header keeps its request id (docs/protocol.md).
inline constexpr size_t kRequestIdOffset = 8;

std::string_view wireName(Wire w);

struct RequestTemplate {
  std::string bytes;       // one whole request, with a placeholder token
  size_t tokenOffset = 0;  // where the kTokenLength token bytes go
  bool hasId = false;      // binary: the u64 request id at kRequestIdOffset
};

// A VERIFY of a token of verifier::kTokenLength characters for `permission` (empty: none):
//   binary  VERIFY frame, the object and owner empty;
//   text    "VERIFY <token>[ <permission>]\n";
//   HTTP    "GET /v1/verify[?perm=<permission, percent-encoded>] HTTP/1.1", Host and
//           "Authorization: Bearer <token>", keep-alive (the HTTP/1.1 default).
// Errors: a permission over 1024 bytes.
Result<RequestTemplate> makeVerifyTemplate(Wire wire, std::string_view permission);

// Appends the template with `token` (kTokenLength bytes) and, for binary, `requestId` patched in.
inline void appendRequest(std::string& out, const RequestTemplate& t, const char* token,
                          uint64_t requestId);

enum class AnswerStatus : uint8_t {
  NeedMore,  // no whole answer at the start of the input yet
  Verdict,   // a verification answer: `reason` (and for ok the token id)
  Refused,   // a well-framed answer that is not a verdict: text ERR, binary ERROR, an HTTP answer
             // without X-Tokend-Reason; the stream is still in step
  Broken,    // the bytes are not an answer of this protocol: the stream cannot be followed
};

struct Answer {
  AnswerStatus status = AnswerStatus::NeedMore;
  size_t consumed = 0;  // Verdict, Refused: the answer's bytes
  verifier::Reason reason = verifier::Reason::Missing;
  std::string_view tokenId;  // Verdict ok: the token id the daemon says it verified
  uint64_t requestId = 0;    // binary
  bool closes = false;       // the server closes after this answer (HTTP Connection: close,
                             // binary framing errors)
  std::string_view message;  // Refused, Broken: why, for a human (points into the input or static)
};

// Parses the answer at the start of `in`. Checks what a client can check without the request:
// the framing, that the reason is a known one, that the status sent with it is the reason's
// (SPEC 6), and that an ok carries its identity fields. Call again on in.substr(consumed).
Answer parseAnswer(Wire wire, std::string_view in);

// --- inline ----------------------------------------------------------------------------------

inline void appendRequest(std::string& out, const RequestTemplate& t, const char* token,
                          uint64_t requestId) {
  size_t at = out.size();
  out.append(t.bytes);
  char* p = out.data() + at;
  __builtin_memcpy(p + t.tokenOffset, token, verifier::kTokenLength);
  if (t.hasId) {
    for (int i = 0; i < 8; ++i) p[kRequestIdOffset + i] = static_cast<char>(requestId >> (8 * i));
  }
}

}  // namespace tokend::tools
