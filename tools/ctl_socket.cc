// tokenctl's user mode: commands go through the daemon's management API on its Unix socket,
// authenticated as the --token's user. One short HTTP/1.1 exchange per command.
#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "base/unique_fd.h"
#include "tools/ctl_backend.h"
#include "verifier/scopes.h"

namespace tokend::tools {
namespace {

Result<UniqueFd> connectUnix(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::fromErrno(errno, "Failed to create socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return makeError("socket path is too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Error::fromErrno(errno, "Failed to connect to " + path);
  }
  return fd;
}

Result<void> sendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::fromErrno(errno, "Failed to send to the daemon");
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

// Reads until the peer closes (requests are sent with "Connection: close").
Result<std::string> readAll(int fd) {
  std::string in;
  char buf[16384];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::fromErrno(errno, "Failed to read from the daemon");
    if (n == 0) return in;
    in.append(buf, static_cast<size_t>(n));
    if (in.size() > (size_t{64} << 20)) return makeError("the daemon's answer is too large");
  }
}

std::string urlEncode(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

class SocketBackend final : public Backend {
 public:
  SocketBackend(std::string socket, std::string token)
      : socket_(std::move(socket)), token_(std::move(token)) {}

  Result<Json> createUser(const std::string& username,
                          const std::vector<std::string>& roles) override {
    return call("POST", "/api/v2/users", Json{{"username", username}, {"roles", roles}});
  }
  Result<Json> listUsers() override { return call("GET", "/api/v2/users"); }
  Result<Json> viewUser(const std::string& ref) override { return call("GET", userPath(ref)); }
  Result<Json> setUserActive(const std::string& ref, bool active) override {
    return call("PUT", userPath(ref) + (active ? "/status/activate" : "/status/suspend"));
  }
  Result<Json> setUserRoles(const std::string& ref,
                            const std::vector<std::string>& roles) override {
    return call("PUT", userPath(ref) + "/roles", Json{{"roles", roles}});
  }
  Result<Json> deleteUser(const std::string& ref) override { return call("DELETE", userPath(ref)); }

  // The body codersdk.CreateTokenRequest makes: `lifetime` in nanoseconds (a Go duration; 0 is
  // the default), allow list entries as {"type", "id"} objects, `token_name` "" for a random one.
  Result<Json> createToken(const TokenCreateArgs& a) override {
    constexpr int64_t kNs = 1000000000;
    Json body = {{"lifetime", 0}, {"token_name", a.name.value_or("")}};
    if (a.lifetime) {
      if (*a.lifetime > INT64_MAX / kNs)
        return makeError("lifetime is longer than a Go duration can hold (about 292 years)");
      body["lifetime"] = *a.lifetime > 0 ? *a.lifetime * kNs : int64_t{-1};
    }
    if (!a.scopes.empty()) body["scopes"] = verifier::splitList(a.scopes);
    if (!a.allowList.empty()) {
      Json allow = Json::array();
      for (const std::string& e : verifier::splitList(a.allowList)) {
        size_t colon = e.find(':');
        if (colon == std::string::npos) {
          allow.push_back(e);  // the daemon names what is wrong with it
        } else {
          allow.push_back({{"type", e.substr(0, colon)}, {"id", e.substr(colon + 1)}});
        }
      }
      body["allow_list"] = allow;
    }
    return call("POST", userPath(a.user.value_or("me")) + "/keys/tokens", body);
  }
  Result<Json> listTokens(const std::optional<std::string>& user, bool all,
                          bool includeExpired) override {
    std::string q;
    if (all) q += "include_all=true";
    if (includeExpired) q += std::string(q.empty() ? "" : "&") + "include_expired=true";
    return call("GET", userPath(user.value_or("me")) + "/keys/tokens" + (q.empty() ? "" : "?" + q));
  }
  Result<Json> viewToken(const std::string& ref, const std::optional<std::string>& user) override {
    return call("GET", userPath(user.value_or("me")) + "/keys/tokens/" + urlEncode(ref));
  }
  Result<Json> removeToken(const std::string& ref, const std::optional<std::string>& user,
                           bool hardDelete) override {
    auto t = viewToken(ref, user);
    if (!t) return t.error();
    std::string path = userPath(user.value_or("me")) + "/keys/" + (*t)["id"].get<std::string>();
    auto r = hardDelete ? call("DELETE", path) : call("PUT", path + "/expire");
    if (!r) return r.error();
    return r->is_object() && r->contains("id") ? *r : *t;
  }
  Result<Json> createSession(const std::string& user, const std::string& loginType) override {
    return call("POST", userPath(user) + "/keys", Json{{"login_type", loginType}});
  }

  Result<std::string> check(const std::string& token, const std::string& permission,
                            const std::string& object, const std::string& owner) override {
    for (const std::string* s : {&token, &permission, &object, &owner}) {
      if (s->find_first_of(" \t\r\n") != std::string::npos) {
        return std::string("DENY bad_request 400");
      }
    }
    std::string line = "VERIFY " + (token.empty() ? std::string("-") : token);
    if (!permission.empty() || !object.empty() || !owner.empty())
      line += " " + (permission.empty() ? "-" : permission);
    if (!object.empty() || !owner.empty()) line += " " + (object.empty() ? "-" : object);
    if (!owner.empty()) line += " " + owner;
    line += "\n";
    auto fd = connectUnix(socket_);
    if (!fd) return fd.error();
    if (auto s = sendAll(fd->get(), line); !s) return s.error();
    ::shutdown(fd->get(), SHUT_WR);
    auto in = readAll(fd->get());
    if (!in) return in.error();
    std::string answer = in->substr(0, in->find('\n'));
    if (answer.rfind("ERR ", 0) == 0) return makeError("the daemon answered: " + answer.substr(4));
    return answer;
  }

 private:
  static std::string userPath(const std::string& ref) { return "/api/v2/users/" + urlEncode(ref); }

  Result<Json> call(const std::string& method, const std::string& path,
                    const Json& body = nullptr) {
    if (token_.empty()) {
      return makeError("user mode needs a token: TOKEND_TOKEN or --token-file FILE");
    }
    std::string payload = body.is_null() ? std::string() : body.dump();
    std::string req = fmt::format(
        "{} {} HTTP/1.1\r\nHost: tokend\r\nCoder-Session-Token: {}\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        method, path, token_, payload.size(), payload);
    auto fd = connectUnix(socket_);
    if (!fd) return fd.error();
    if (auto s = sendAll(fd->get(), req); !s) return s.error();
    auto in = readAll(fd->get());
    if (!in) return in.error();
    // "HTTP/1.1 200 OK\r\n...\r\n\r\n<body>"
    if (in->size() < 12 || in->compare(0, 5, "HTTP/") != 0)
      return makeError("the daemon's answer is not HTTP");
    int status = std::atoi(in->c_str() + 9);
    size_t bodyAt = in->find("\r\n\r\n");
    std::string text = bodyAt == std::string::npos ? std::string() : in->substr(bodyAt + 4);
    Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (status >= 200 && status < 300) return j.is_discarded() ? Json::object() : j;
    std::string message = fmt::format("the daemon refused ({})", status);
    if (j.is_object() && j.contains("message") && j["message"].is_string()) {
      message = j["message"].get<std::string>();
      std::string detail;
      if (j.contains("detail") && j["detail"].is_string()) detail = j["detail"].get<std::string>();
      // A 400's message is coderd's summary ("Failed to create API key."); its detail says why,
      // as operator mode would.
      if (status == 400 && !detail.empty()) {
        message = detail;
      } else if (!detail.empty()) {
        message += ": " + detail;
      }
    }
    return makeError(message, status == 404 ? -ENOENT : -EPERM);
  }

  std::string socket_;
  std::string token_;
};

}  // namespace

Result<std::unique_ptr<Backend>> openSocketBackend(const std::string& socketPath,
                                                   const std::string& token) {
  return std::unique_ptr<Backend>(new SocketBackend(socketPath, token));
}

}  // namespace tokend::tools
