// libFuzzer target: the HTTP/1.1 parser, the token and query lookups, and the response writer.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "daemon/http.h"
#include "tests/fuzz/fuzz_support.h"

using namespace tokend::daemon;
using tokend::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  static HttpRequest request;
  static HttpRequest again;
  static DecodeBuffer scratch;
  static std::string out;

  std::string_view rest = in;
  while (true) {
    HttpParse p = parseHttpRequest(rest, request);
    out.clear();
    if (p.status == ParseStatus::NeedMore) break;
    if (p.status == ParseStatus::Error) {
      require(p.errorStatus >= 400 && p.errorStatus < 600 && !p.errorMessage.empty());
      appendParseErrorResponse(out, p);
      break;
    }
    require(p.consumed > 0 && p.consumed <= rest.size());
    require(request.headerCount <= kMaxHttpHeaders);
    require(request.body.size() <= kMaxHttpBody);
    require(request.path.starts_with("/"));

    // The request alone parses to the same end; one byte less is not yet a request.
    std::string_view whole = rest.substr(0, p.consumed);
    HttpParse q = parseHttpRequest(whole, again);
    require(q.status == ParseStatus::Complete && q.consumed == p.consumed);
    require(parseHttpRequest(whole.substr(0, whole.size() - 1), again).status ==
            ParseStatus::NeedMore);

    scratch.reset();
    auto query = extractVerifyQuery(request, scratch);
    require(scratch.used() <= kMaxHttpHead);
    VerifyAnswer answer;
    if (query) {
      answer.reason =
          query->token.empty() ? tokend::verifier::Reason::Missing : tokend::verifier::Reason::Ok;
      answer.username = query->permission;
      answer.tokenId = query->token;
    } else {
      answer.reason = tokend::verifier::Reason::BadRequest;
    }
    appendVerifyResponse(out, answer, request.keepAlive);
    appendJsonError(out, 404, request.keepAlive, request.path, request.query);
    (void)cookieValue(request, "coder_session_token");
    rest.remove_prefix(p.consumed);
  }
  return 0;
}
