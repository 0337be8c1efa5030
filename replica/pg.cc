// libpq wrapper: connection, deadline-bounded queries.
#include "replica/pg.h"

#include <poll.h>

#include <chrono>
#include <utility>

namespace tokend::replica {

namespace {
std::string trimmed(const char* msg) {
  std::string s = msg ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}
}  // namespace

std::string pgMessage(const PGconn* conn) {
  return trimmed(PQerrorMessage(conn));
}
std::string pgMessage(const PGresult* res) {
  return trimmed(PQresultErrorMessage(res));
}

Result<PgConn> PgConn::connect(const std::string& conninfo) {
  // libpq parses the conninfo (a key=value string or a URI) and adds its environment and
  // password file; connect_timeout is only a default: the operator's value wins.
  const char* keys[] = {"connect_timeout", "dbname", nullptr};
  const char* values[] = {"10", conninfo.c_str(), nullptr};
  PGconn* c = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (c == nullptr) return makeError("Failed to connect to PostgreSQL: out of memory", -ENOMEM);
  if (PQstatus(c) != CONNECTION_OK) {
    std::string msg = pgMessage(c);
    PQfinish(c);
    return makeError("Failed to connect to PostgreSQL: " + msg, -ECONNREFUSED);
  }
  // Server notices (a ROLLBACK outside a transaction) would go to stderr unformatted: drop them.
  PQsetNoticeProcessor(
      c, [](void*, const char*) {}, nullptr);
  // Everything tokend reads is text; the session's settings must not change what it sees.
  PGresult* r =
      PQexec(c,
             "SET client_encoding = 'UTF8'; SET datestyle = 'ISO'; "
             "SET TIME ZONE 'UTC'; SET lock_timeout = '10s'; SET client_min_messages = warning");
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  std::string msg = ok ? "" : pgMessage(r);
  PQclear(r);
  if (!ok) {
    PQfinish(c);
    return makeError("Failed to set up the PostgreSQL session: " + msg);
  }
  return PgConn(c);
}

PgConn& PgConn::operator=(PgConn&& o) noexcept {
  if (this != &o) {
    close();
    conn_ = std::exchange(o.conn_, nullptr);
  }
  return *this;
}

PgConn::~PgConn() {
  close();
}

void PgConn::close() {
  if (conn_) PQfinish(conn_);
  conn_ = nullptr;
}

Result<PgResult> PgConn::exec(const std::string& sql, int timeoutMs) {
  if (!conn_) return makeError("no PostgreSQL connection", -ENOTCONN);
  if (!PQsendQuery(conn_, sql.c_str())) {
    return makeError("Failed to send a query to PostgreSQL: " + pgMessage(conn_), -EIO);
  }
  return collect("query", timeoutMs);
}

Result<PgResult> PgConn::execParams(const std::string& sql,
                                    const std::vector<std::optional<std::string>>& params,
                                    int timeoutMs) {
  if (!conn_) return makeError("no PostgreSQL connection", -ENOTCONN);
  std::vector<const char*> values;
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  if (!PQsendQueryParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
                         values.data(), nullptr, nullptr, 0)) {
    return makeError("Failed to send a query to PostgreSQL: " + pgMessage(conn_), -EIO);
  }
  return collect("query", timeoutMs);
}

Result<void> PgConn::prepare(const std::string& name, const std::string& sql, int timeoutMs) {
  if (!conn_) return makeError("no PostgreSQL connection", -ENOTCONN);
  if (!PQsendPrepare(conn_, name.c_str(), sql.c_str(), 0, nullptr)) {
    return makeError("Failed to send a query to PostgreSQL: " + pgMessage(conn_), -EIO);
  }
  auto r = collect("prepare", timeoutMs);
  if (!r) return r.error();
  return {};
}

Result<PgResult> PgConn::execPrepared(const std::string& name,
                                      const std::vector<std::optional<std::string>>& params,
                                      int timeoutMs) {
  if (!conn_) return makeError("no PostgreSQL connection", -ENOTCONN);
  std::vector<const char*> values;
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  if (!PQsendQueryPrepared(conn_, name.c_str(), static_cast<int>(values.size()), values.data(),
                           nullptr, nullptr, 0)) {
    return makeError("Failed to send a query to PostgreSQL: " + pgMessage(conn_), -EIO);
  }
  return collect("query", timeoutMs);
}

Result<PgResult> PgConn::collect(const std::string& what, int timeoutMs) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  PgResult last;
  std::string error;
  for (;;) {
    while (PQisBusy(conn_)) {
      int flush = PQflush(conn_);
      if (flush < 0) break;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now())
                      .count();
      if (left <= 0) {
        // Cancel so the server stops working on it, then drop the connection: its state is
        // unknown.
        if (PGcancel* cancel = PQgetCancel(conn_)) {
          char buf[256];
          PQcancel(cancel, buf, sizeof buf);
          PQfreeCancel(cancel);
        }
        close();
        return makeError("PostgreSQL did not answer the " + what + " within " +
                             std::to_string(timeoutMs) + " ms",
                         -ETIMEDOUT);
      }
      pollfd p{PQsocket(conn_), static_cast<short>(POLLIN | (flush == 1 ? POLLOUT : 0)), 0};
      if (p.fd < 0) break;
      ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (!PQconsumeInput(conn_)) break;
    }
    PGresult* r = PQgetResult(conn_);
    if (r == nullptr) break;
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && error.empty()) error = pgMessage(r);
    last.reset(r);
    if (PQstatus(conn_) == CONNECTION_BAD) break;
  }
  if (PQstatus(conn_) == CONNECTION_BAD) {
    std::string msg = pgMessage(conn_);
    close();
    return makeError("Lost the PostgreSQL connection: " + (error.empty() ? msg : error), -EPIPE);
  }
  if (!error.empty()) return makeError(error, -EIO);
  if (!last) return makeError("PostgreSQL returned no result", -EIO);
  return last;
}

}  // namespace tokend::replica
