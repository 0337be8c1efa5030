// KeyDb: the LMDB key database of users and tokens, with the changelog a running daemon follows.
//
// Layout: one LMDB environment (a directory, the daemon's data dir) with named databases
//   meta        "schema" -> u32 version; "trimmed_through" -> u64 txn id (changelog trimmed up to);
//               "max_map_size" -> u64 bytes (the cap every process enforces, KeyDbOptions)
//   users       uuid[16]            -> UserRecord
//   usernames   username            -> uuid[16]
//   tokens      id[10]              -> TokenRecord
//   token_names uuid[16] + name     -> id[10]     (LoginType::Token only; names unique per user)
//   user_tokens uuid[16] + id[10]   -> ""         (every token of a user, for list and delete)
//   changelog   txn id (u64 BE)     -> 'T' id[10] | 'U' uuid[16], repeated: what that txn touched
// (meta values are little-endian.)
//
// Threads: a KeyDb is shared by all threads. A Reader belongs to one thread at a time (LMDB read
// transactions are tied to threads; the env is opened MDB_NOTLS so a reset Reader may move).
// One Writer at a time per process: update() calls are serialised (LMDB serialises writers
// across processes too).
// The map: growing it (MDB_MAP_FULL) or adopting another process's growth (MDB_MAP_RESIZED)
// remaps it, which waits until no Reader or Writer of this KeyDb is active. So a thread must not
// hold a Reader active while it calls update() or begins another Reader: if the map must change
// then, that call fails (-EDEADLK) instead of waiting for itself.
// Errors: every Result error carries a message "Failed to <verb> <object>: <mdb_strerror>";
// refusals of input say what was refused (-EEXIST for a taken name, -ENOENT for a missing record).
#pragma once

#include <lmdb.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "base/uuid.h"
#include "verifier/records.h"

namespace tokend::verifier {

// The meta key a PostgreSQL replica (replica/) keeps its source database's epoch under: present
// exactly in a replica's data dir, whose users and tokens only PostgreSQL may change.
inline constexpr std::string_view kReplicaEpochMeta = "ext.pg.epoch";

inline constexpr uint32_t kSchemaVersion = 1;

// The cap on the map (--max-db-size) when the database stores none, and the least one taken.
inline constexpr size_t kDefaultMaxMapSize = size_t{1} << 40;
inline constexpr size_t kMinMaxMapSize = size_t{256} << 10;

struct KeyDbOptions {
  size_t initialMapSize = size_t{64} << 20;  // grown by doubling on MDB_MAP_FULL; at most the cap
  // The cap the map may grow to, one for every process on the database: 0 adopts the cap stored
  // in meta ("max_map_size"; kDefaultMaxMapSize when none is), any other value replaces the
  // stored cap (a read-only open only uses it). A KeyDb rereads the stored cap at each write
  // transaction, so a cap another process sets holds here from the next write on.
  size_t maxMapSize = 0;
  // Writer::requireRoom() refuses growth when less than this is left below the cap (0: cap / 8,
  // at most 4 MiB), so that deletes and updates, which need a few fresh pages
  // themselves (copy-on-write), still work in a full database and can make room again.
  size_t reserveBytes = 0;
  unsigned maxReaders = 1024;
  size_t changelogKeep = 65536;  // entries kept before the oldest are trimmed
  bool readOnly = false;
};

// What changed since a given transaction id. `gap` means the changelog no longer reaches back that
// far (trimmed): the follower must drop everything it cached.
struct Changes {
  bool gap = false;
  uint64_t upTo = 0;  // the newest txn id covered
  std::vector<std::string> tokenIds;
  std::vector<Uuid> userIds;
};

class KeyDb;

namespace detail {
// One user of the memory map (a Reader, or the Writer): `active` while its transaction is live, so
// a remap can wait for it; `owner` names the thread that made it active, so a remap started by
// that same thread fails instead of waiting for itself. On its own cache line: readers on many
// cores set and clear theirs.
struct MapUse {
  alignas(64) std::atomic<bool> active{false};
  std::atomic<uintptr_t> owner{0};
};
}  // namespace detail

// Read methods shared by Reader and Writer. Views returned are valid until the transaction ends.
class Txn {
 public:
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;

  // The raw encoded token record, zero-copy from the map; nullopt when absent.
  Result<std::optional<std::string_view>> tokenBytes(std::string_view id);
  Result<std::optional<TokenRecord>> token(std::string_view id);
  Result<std::optional<UserRecord>> user(const Uuid& id);
  Result<std::optional<UserRecord>> userByName(std::string_view username);
  // The LoginType::Token token of `user` named `name`.
  Result<std::optional<TokenRecord>> tokenByName(const Uuid& user, std::string_view name);
  Result<std::vector<UserRecord>> users();
  // Every token of one user, or of all users when `user` is nullopt; ordered by user then id.
  Result<std::vector<TokenRecord>> tokens(std::optional<Uuid> user);
  // The keys of the tokens (ids) or users in byte order after `after` (from the first when it is
  // empty or nullopt), up to and including `through` when given (PostgreSQL's `ORDER BY id COLLATE
  // "C"` and uuid order are this order): the replica's reconciliation compares one such range at a
  // time.
  Result<std::vector<std::string>> tokenIdsAfter(std::string_view after,
                                                 std::optional<std::string_view> through);
  Result<std::vector<Uuid>> userIdsAfter(std::optional<Uuid> after, std::optional<Uuid> through);
  // Changes committed after txn id `since`, up to this transaction's snapshot. `gap` also when
  // `since` is newer than the snapshot (the database was replaced under the follower).
  Result<Changes> changesSince(uint64_t since);
  // A value another module keeps in the meta database (the PostgreSQL replica's watermark),
  // under a key that must begin with "ext."; nullopt when absent. The view lives as the
  // transaction does.
  Result<std::optional<std::string_view>> extMeta(std::string_view key);
  // Whether this is a PostgreSQL replica's data dir (SPEC 11): it holds kReplicaEpochMeta.
  Result<bool> isReplica() {
    auto v = extMeta(kReplicaEpochMeta);
    if (!v) return v.error();
    return v->has_value();
  }
  MDB_txn* raw() { return txn_; }

 protected:
  Txn(KeyDb& db) : db_(db) {}
  ~Txn() = default;
  // mdb_get, with keys LMDB cannot hold (empty, too long) reported as MDB_NOTFOUND.
  int get(MDB_dbi dbi, std::string_view key, MDB_val& value);
  // The newest committed txn id this transaction sees.
  uint64_t snapshotId();
  KeyDb& db_;
  MDB_txn* txn_ = nullptr;
  bool live_ = false;  // txn_ is begun (or renewed) and not yet reset, committed or aborted
  bool write_ = false;
};

// A long-lived read transaction: begin() renews it, end() resets it (never freed between uses).
class Reader : public Txn {
 public:
  ~Reader();
  Result<void> begin();
  void end();
  uint64_t txnId() const;

 private:
  friend class KeyDb;
  explicit Reader(KeyDb& db) : Txn(db) {}
  detail::MapUse use_;
};

// A token for Writer::insertNewTokens: its record already encoded (encodeToken) and checked.
struct NewTokenRef {
  std::string_view id;       // kTokenIdLength characters of [0-9A-Za-z]
  std::string_view encoded;  // encodeToken() of the record
  const Uuid* user;          // the record's user
  std::string_view name;     // the record's name for LoginType::Token, empty for sessions
};

// One write transaction; aborted on destruction unless committed. Every mutation records the
// touched ids, written to the changelog at commit.
class Writer : public Txn {
 public:
  ~Writer();
  // Insert or replace; keeps usernames unique ("user \"x\" already exists").
  Result<void> putUser(const UserRecord& u);
  // Deletes the user, their username and all of their tokens (-ENOENT if there is no such user).
  Result<void> deleteUser(const Uuid& id);
  // Insert or replace. The id must be kTokenIdLength characters of [0-9A-Za-z] and the user must
  // exist. A LoginType::Token token whose name another token of the same user holds is refused
  // with "A token with name \"<name>\" already exists.".
  Result<void> putToken(const TokenRecord& t);
  // Deletes the token and its index entries (-ENOENT if there is no such token).
  Result<void> deleteToken(std::string_view id);
  // For operations that grow the database (new users, tokens, sessions): -ENOSPC ("the key
  // database is full: ...") when less than KeyDbOptions::reserveBytes plus `bytes` (what a bulk
  // write expects to add) is left below the cap (never-used pages plus LMDB's free list), so
  // that a full database still takes deletes, expiries and write-backs, which free space.
  Result<void> requireRoom(size_t bytes = 0);
  // Writes (or, with nullopt, deletes) an "ext." meta value in this transaction, so that it
  // commits atomically with the records written beside it.
  Result<void> putExtMeta(std::string_view key, std::optional<std::string_view> value);
  // update() commits after `fn` returns; call this only to see a commit error inside `fn`.
  // Refused after a failed write in this transaction (LMDB may have applied part of it).
  Result<void> commit();

  // Bulk loading (tokenctl import): inserts tokens that must all be new, given in strictly
  // increasing id order, with their index entries, by sorted cursor writes (LMDB's append mode
  // past the last id), so that each page is touched once. Refuses the whole call, naming the
  // token and setting `failedAt` to its index, when an id is taken or a name is held by another
  // token of the user (-EEXIST), or a user does not exist (-ENOENT); the caller then aborts.
  // No changelog entries are written for these tokens: a token that was not in the database
  // cannot be in any cache, so there is nothing to invalidate.
  Result<void> insertNewTokens(std::span<const NewTokenRef> sortedById, size_t& failedAt);

 private:
  friend class KeyDb;
  explicit Writer(KeyDb& db) : Txn(db) { write_ = true; }
  int put(MDB_dbi dbi, std::string_view key, std::string_view value);
  int del(MDB_dbi dbi, std::string_view key);
  // Deletes the index entry `key` only when it still points at `id`.
  int delIndex(MDB_dbi dbi, std::string_view key, std::string_view id);
  // The error for a failed LMDB write; remembers MDB_MAP_FULL so update() grows the map.
  Error failed(int rc, const std::string& what);
  Result<void> usable(const char* what) const;
  Result<void> removeToken(const TokenRecord& t);
  Result<void> writeChangelog();
  void abort();
  std::vector<std::string> touchedTokens_;
  std::vector<Uuid> touchedUsers_;
  bool done_ = false;
  bool failed_ = false;
  bool mapFull_ = false;
};

class KeyDb {
 public:
  // Creates `dir` (mode 0700) and the environment if missing; writes or checks the schema
  // version (a newer one is refused: "database schema N is newer than this build's M").
  static Result<std::unique_ptr<KeyDb>> open(const std::string& dir,
                                             const KeyDbOptions& options = {});
  ~KeyDb();

  // A Reader with its LMDB reader slot taken (a full reader table fails here), not yet begun.
  // Destroy every Reader before the KeyDb.
  Result<std::unique_ptr<Reader>> reader();
  // Runs `fn` in one write transaction and commits it; on MDB_MAP_FULL grows the map and runs
  // `fn` again from the start (so `fn` must have no side effects outside the Writer). Any error
  // from `fn` aborts the transaction: nothing is written. A write refused for space (the map at
  // maxMapSize, or the file system full, which LMDB reports as a short write, EIO) is -ENOSPC.
  Result<void> update(const std::function<Result<void>(Writer&)>& fn);
  // The id of the last committed write transaction of any process (cheap: no transaction).
  uint64_t lastTxnId() const;
  size_t mapSize() const;
  // The cap in force (KeyDbOptions::maxMapSize), as of this process's last write transaction.
  size_t maxMapSize() const { return maxMapSize_.load(std::memory_order_relaxed); }
  MDB_env* env() { return env_; }

 private:
  friend class Txn;
  friend class Reader;
  friend class Writer;
  KeyDb() = default;
  Result<void> openDatabases(const std::string& what);
  void enterMap(detail::MapUse& use);
  void leaveMap(detail::MapUse& use);
  // Remaps: doubles the map (grow) or adopts the size another process committed (!grow).
  Result<void> resizeMap(bool grow);
  // Reads the stored cap in `txn` into maxMapSize_ (kept when none is stored).
  int readCap(MDB_txn* txn);
  std::string dir_;
  MDB_env* env_ = nullptr;
  MDB_dbi meta_ = 0, users_ = 0, usernames_ = 0, tokens_ = 0, tokenNames_ = 0, userTokens_ = 0,
          changelog_ = 0;
  KeyDbOptions options_;
  // relaxed: written under writeMu_ (or at open) and read by the writer and for reports only.
  std::atomic<size_t> maxMapSize_{kDefaultMaxMapSize};
  bool capStored_ = false;  // meta holds a cap (as of the last readCap); under writeMu_
  bool capReady_ = false;   // the databases are open, so readCap() can run
  size_t maxKeySize_ = 0;
  // Guards mapUsers_ and is held across a remap; also keeps mdb_env_info off a map being swapped.
  mutable std::mutex mapMu_;
  std::vector<detail::MapUse*> mapUsers_;
  std::atomic<bool> remapping_{false};
  std::mutex writeMu_;  // one update() at a time in this process
  detail::MapUse writerUse_;
};

}  // namespace tokend::verifier
