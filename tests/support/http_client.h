// Test support: one HTTP/1.1 request to tokend's socket on a fresh connection, and its answer.
#pragma once

#include <map>
#include <string>

namespace tokend::test {

struct HttpReply {
  int status = 0;                              // 0 when there was no answer
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
};

// Sends `method path` with the token as Coder-Session-Token (when not empty), the body (JSON)
// and Connection: close, and reads the answer until the daemon closes.
HttpReply httpRequest(const std::string& socket, const std::string& method, const std::string& path,
                      const std::string& token = {}, const std::string& body = {},
                      int timeoutMs = 10000);

}  // namespace tokend::test
