// TCP listening sockets for --http-listen and --metrics-listen (SPEC 7): parsing ADDR:PORT, the
// loopback check, and the socket itself.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <string>
#include <string_view>

#include "base/result.h"
#include "base/unique_fd.h"

namespace tokend::daemon {

struct TcpAddress {
  sockaddr_storage addr{};
  socklen_t length = 0;
};

// "127.0.0.1:8081", "[::1]:8081", "localhost:8081" (resolved, the first address), ":8081" or
// "0.0.0.0:8081" (every address). The port is 0..65535; 0 lets the kernel pick one.
Result<TcpAddress> parseTcpAddress(std::string_view text);
// 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
bool isLoopback(const TcpAddress& a);
// "127.0.0.1:8081", "[::1]:8081".
std::string formatTcpAddress(const TcpAddress& a);

// A listening, non-blocking, CLOEXEC TCP socket on `text` (SO_REUSEADDR, so a restart does not
// wait out TIME_WAIT). Without `allowAny`, an address that is not loopback is refused. `bound`
// receives the address bound (with the kernel's port for port 0).
Result<UniqueFd> listenTcp(std::string_view text, bool allowAny, TcpAddress& bound);

}  // namespace tokend::daemon
