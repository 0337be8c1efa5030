// Test support: a minimal HTTP/1.1 client over a Unix socket.
#include "tests/support/http_client.h"

#include <cstdlib>

#include "tests/support/daemon.h"

namespace tokend::test {

HttpReply httpRequest(const std::string& socket, const std::string& method, const std::string& path,
                      const std::string& token, const std::string& body, int timeoutMs) {
  HttpReply r;
  UniqueFd fd = connectUnix(socket);
  if (!fd) return r;
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n";
  if (!token.empty()) req += "Coder-Session-Token: " + token + "\r\n";
  if (!body.empty() || method == "POST" || method == "PUT")
    req +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n" + body;
  if (!sendAll(fd.get(), req)) return r;
  bool closed = false;
  std::string in = readUntilClosed(fd.get(), timeoutMs, &closed);
  size_t end = in.find("\r\n\r\n");
  if (in.size() < 12 || end == std::string::npos) return r;
  r.status = std::atoi(in.c_str() + 9);
  r.body = in.substr(end + 4);
  size_t pos = in.find("\r\n");
  while (pos < end) {
    size_t next = in.find("\r\n", pos + 2);
    std::string line = in.substr(pos + 2, next - pos - 2);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      size_t v = line.find_first_not_of(' ', colon + 1);
      r.headers[name] = v == std::string::npos ? "" : line.substr(v);
    }
    pos = next;
  }
  return r;
}

}  // namespace tokend::test
