// The text protocol (SPEC 7): one request per line, for shells and scripts.
//
//   VERIFY <token> [<resource:action> [<type:uuid>|- [<owner uuid>]]]
//     -> OK <user_id> <username> <token_id> <login_type> <expires_at> [owned]
//     -> DENY <reason> <http status>
//   PING -> PONG
//   anything else -> ERR <message>
//
// Lines end in "\n" or "\r\n". Words are separated by runs of spaces or tabs; leading and trailing
// blanks are ignored. Command words are upper case. Every line, the empty one included, gets
// exactly one answer line, so a pipelining client can count answers. A line longer than
// kMaxTextLine gets "ERR line too long" and the connection is closed: there is no way to find
// where the next request starts without reading the rest of an unbounded line.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "daemon/query.h"
#include "verifier/reason.h"

namespace tokend::daemon {

// The most bytes one line may take, its "\n" included.
inline constexpr size_t kMaxTextLine = 8192;

enum class TextCommand : uint8_t { Verify, Ping, Invalid };

struct TextRequest {
  TextCommand command = TextCommand::Invalid;
  VerifyQuery query;       // Verify: views into the input line ("-" for the object is absent)
  std::string_view error;  // Invalid: the message for ERR (static storage)
};

struct TextParse {
  ParseStatus status = ParseStatus::NeedMore;
  // Complete: the bytes of the line and its terminator; the request (possibly Invalid, which is
  // answered with ERR and the connection kept). Error: the line is over kMaxTextLine; answer
  // appendTextError(out, kTextLineTooLong) and close.
  size_t consumed = 0;
  TextRequest request;
};

inline constexpr std::string_view kTextLineTooLong = "line too long";

// Parses the first line of `in`. Never reads past in.size(); looks at no more than kMaxTextLine
// bytes. Call again on the rest for pipelined requests.
TextParse parseTextLine(std::string_view in);

// Encoders append one answer line to `out`. They allocate only when `out` must grow.
// "OK <user_id> <username> <token_id> <login_type> <expires_at>\n", with " owned" before the
// newline when the grant rests on the caller's word about the owner (answer.owned).
void appendTextOk(std::string& out, const VerifyAnswer& answer);
// "DENY <reason> <status>\n"
void appendTextDeny(std::string& out, verifier::Reason reason);
// OK when answer.reason is Ok, else DENY: the line `tokenctl check` prints too.
void appendTextAnswer(std::string& out, const VerifyAnswer& answer);
// "PONG\n"
void appendTextPong(std::string& out);
// "ERR <message>\n"; control characters in the message become spaces so it stays one line.
void appendTextError(std::string& out, std::string_view message);

}  // namespace tokend::daemon
