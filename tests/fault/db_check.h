// Fault-test support: an independent consistency check of a key database after a crash.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "verifier/records.h"

namespace tokend::test {

struct DbCheck {
  std::vector<std::string> problems;  // empty when the database is consistent
  std::map<std::string, verifier::TokenRecord> tokens;
  std::map<std::string, verifier::UserRecord> users;  // by username

  // The problems, one a line, for a test's failure message.
  std::string report() const {
    std::string all;
    for (const std::string& p : problems) all += p + "\n";
    return all;
  }
};

// Opens the database in `dataDir` read-only (as a second process would, while or after tokend
// runs) and checks every record and index with raw LMDB cursors: every user and token record
// decodes and sits under its own key; every token's user exists; the username, token-name and
// user-token indexes point at records that point back, and every record is in its indexes.
DbCheck checkDatabase(const std::string& dataDir);

}  // namespace tokend::test
