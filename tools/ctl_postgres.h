// tokenctl's `db` commands for SPEC 11: `db init` and `db status` on a PostgreSQL database.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace tokend::tools {

struct DbCommand {
  CLI::App* command = nullptr;
  CLI::App* init = nullptr;
  CLI::App* status = nullptr;
};

// Registers `db init` and `db status` under `app`.
void addDbCommand(CLI::App& app, DbCommand& cmd);
// Runs the parsed one against `conninfo`; returns the exit code.
int runDb(const std::string& conninfo, const DbCommand& cmd);

}  // namespace tokend::tools
