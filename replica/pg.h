// A small libpq wrapper: a connection, results as RAII handles, and queries with a deadline.
// The only place besides replica/*.cc that sees libpq is tools/ctl_postgres.cc.
#pragma once

#include <libpq-fe.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace tokend::replica {

struct PgResultFree {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, PgResultFree>;

// One connection. Move-only; closed on destruction.
class PgConn {
 public:
  PgConn() = default;
  // Connects (blocking, bounded by libpq's connect_timeout, which defaults to 10 s here when the
  // conninfo does not set one). Errors: "Failed to connect to PostgreSQL: <libpq's message>".
  static Result<PgConn> connect(const std::string& conninfo);
  PgConn(PgConn&& o) noexcept : conn_(std::exchange(o.conn_, nullptr)) {}
  PgConn& operator=(PgConn&& o) noexcept;
  ~PgConn();

  bool ok() const { return conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK; }
  PGconn* raw() { return conn_; }
  int backendPid() const { return conn_ ? PQbackendPID(conn_) : 0; }

  // Runs one or more statements (simple protocol, no parameters); the last result is returned.
  // `timeoutMs` bounds the wait for the answer: past it the query is cancelled and the
  // connection is closed (a black-holed server must not hang the caller).
  Result<PgResult> exec(const std::string& sql, int timeoutMs = 30000);
  // One statement with text parameters (nullopt: NULL).
  Result<PgResult> execParams(const std::string& sql,
                              const std::vector<std::optional<std::string>>& params,
                              int timeoutMs = 30000);
  // Prepares `sql` as the named statement for this connection (gone with it), and runs it.
  Result<void> prepare(const std::string& name, const std::string& sql, int timeoutMs = 30000);
  Result<PgResult> execPrepared(const std::string& name,
                                const std::vector<std::optional<std::string>>& params,
                                int timeoutMs = 30000);
  void close();

 private:
  explicit PgConn(PGconn* c) : conn_(c) {}
  Result<PgResult> collect(const std::string& what, int timeoutMs);
  PGconn* conn_ = nullptr;
};

// libpq's message without its trailing newline.
std::string pgMessage(const PGconn* conn);
std::string pgMessage(const PGresult* res);

// Text of a column (empty for NULL) and whether it is NULL.
inline std::string_view pgText(const PGresult* r, int row, int col) {
  return {PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col))};
}
inline bool pgNull(const PGresult* r, int row, int col) {
  return PQgetisnull(r, row, col) != 0;
}

}  // namespace tokend::replica
