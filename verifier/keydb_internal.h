// keydb_internal: small LMDB helpers shared by keydb.cc and keydb_bulk.cc. Not part of the
// verifier's interface: nothing outside those two files includes it.
#pragma once

#include <lmdb.h>

#include <string>
#include <string_view>

#include "base/uuid.h"
#include "verifier/records.h"

namespace tokend::verifier::keydb_internal {

inline MDB_val val(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}
inline std::string_view view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}
inline std::string_view uuidKey(const Uuid& u) {
  return {reinterpret_cast<const char*>(u.bytes.data()), u.bytes.size()};
}
inline std::string quoted(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

inline bool validTokenId(std::string_view id) {
  if (id.size() != kTokenIdLength) return false;
  for (char c : id) {
    bool alnum = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    if (!alnum) return false;
  }
  return true;
}

// Closes a cursor when the scope ends: read-only transactions do not close their cursors.
class Cursor {
 public:
  Cursor() = default;
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  ~Cursor() {
    if (c_) mdb_cursor_close(c_);
  }
  int open(MDB_txn* txn, MDB_dbi dbi) { return mdb_cursor_open(txn, dbi, &c_); }
  int get(MDB_val& k, MDB_val& v, MDB_cursor_op op) { return mdb_cursor_get(c_, &k, &v, op); }
  MDB_cursor* raw() { return c_; }
  // The database's last key, or empty when it has none.
  int lastKey(std::string& out) {
    MDB_val k, v;
    int rc = get(k, v, MDB_LAST);
    out.clear();
    if (rc == MDB_NOTFOUND) return 0;
    if (rc == 0) out.assign(view(k));
    return rc;
  }

 private:
  MDB_cursor* c_ = nullptr;
};

}  // namespace tokend::verifier::keydb_internal
