// TCP listening sockets: ADDR:PORT parsing, the loopback check, bind and listen.
#include "daemon/tcp_listen.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/tcp.h>

#include <charconv>
#include <cstring>

namespace tokend::daemon {

Result<TcpAddress> parseTcpAddress(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return makeError(
        fmt::format("\"{}\": {} (want ADDR:PORT, like 127.0.0.1:8081 or [::1]:8081)", text, why),
        -EINVAL);
  };
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  std::string_view host = text.substr(0, colon), portText = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return bad("an IPv6 address goes in brackets");
  }
  unsigned port = 0;
  auto [end, ec] = std::from_chars(portText.data(), portText.data() + portText.size(), port);
  if (portText.empty() || ec != std::errc() || end != portText.data() + portText.size() ||
      port > 65535)
    return bad("the port must be a number from 0 to 65535");

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string hostText(host), portString = std::to_string(port);
  int rc = getaddrinfo(hostText.empty() ? nullptr : hostText.c_str(), portString.c_str(), &hints,
                       &found);
  if (rc != 0) return bad(gai_strerror(rc));
  TcpAddress a;
  std::memcpy(&a.addr, found->ai_addr, found->ai_addrlen);
  a.length = found->ai_addrlen;
  freeaddrinfo(found);
  return a;
}

bool isLoopback(const TcpAddress& a) {
  if (a.addr.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a.addr);
    return (ntohl(in.sin_addr.s_addr) >> 24) == 127;
  }
  if (a.addr.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a.addr).sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&in6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&in6) && in6.s6_addr[12] == 127;
  }
  return false;
}

std::string formatTcpAddress(const TcpAddress& a) {
  char host[INET6_ADDRSTRLEN] = {};
  if (a.addr.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a.addr);
    inet_ntop(AF_INET, &in.sin_addr, host, sizeof host);
    return fmt::format("{}:{}", host, ntohs(in.sin_port));
  }
  const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a.addr);
  inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof host);
  return fmt::format("[{}]:{}", host, ntohs(in6.sin6_port));
}

Result<UniqueFd> listenTcp(std::string_view text, bool allowAny, TcpAddress& bound) {
  auto a = parseTcpAddress(text);
  if (!a) return a.error();
  if (!allowAny && !isLoopback(*a))
    return makeError(fmt::format("{} is not a loopback address; --http-listen-any allows it",
                                 formatTcpAddress(*a)),
                     -EINVAL);
  UniqueFd fd(::socket(a->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error::fromErrno(errno, "Failed to create a TCP socket");
  const int one = 1;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
    return Error::fromErrno(errno, "Failed to set SO_REUSEADDR");
  // Small answers to pipelined requests: do not hold them back for Nagle.
  (void)::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&a->addr), a->length) != 0)
    return Error::fromErrno(errno, "Failed to bind " + formatTcpAddress(*a));
  if (::listen(fd.get(), 4096) != 0)
    return Error::fromErrno(errno, "Failed to listen on " + formatTcpAddress(*a));
  bound = *a;
  bound.length = sizeof bound.addr;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound.addr), &bound.length) != 0)
    return Error::fromErrno(errno, "getsockname");
  return fd;
}

}  // namespace tokend::daemon
