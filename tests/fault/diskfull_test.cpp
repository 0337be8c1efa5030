// Fault test: the disk under the key database full (a 2 MiB tmpfs). Writes fail with a clear
// error (the management API's 507, tokenctl's message), verification and reads go on, and freeing
// space lets writes resume. Skipped (exit 77) where mounting a tmpfs is not permitted.
#include <doctest/doctest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/fault/db_check.h"
#include "tests/fault/fill.h"
#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

using namespace tokend::test;
using Json = nlohmann::json;

namespace {

// A tmpfs of `size` mounted on a fresh directory, unmounted (lazily) on destruction.
class SmallDisk {
 public:
  explicit SmallDisk(const char* size) {
    path_ = tmp_ / "disk";
    ::mkdir(path_.c_str(), 0700);
    std::string opts = std::string("size=") + size + ",mode=0700";
    if (::mount("tokend-test", path_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
      std::fprintf(stderr,
                   "SKIP: cannot mount a tmpfs (%s): the disk-full test needs root or "
                   "CAP_SYS_ADMIN\n",
                   std::strerror(errno));
      std::exit(77);
    }
  }
  ~SmallDisk() { ::umount2(path_.c_str(), MNT_DETACH); }
  const std::string& path() const { return path_; }

 private:
  TempDir tmp_;
  std::string path_;
};

}  // namespace

TEST_SUITE("DiskFull") {
  TEST_CASE(
      "a full disk refuses writes clearly, keeps verifying, and recovers when space is freed") {
    SmallDisk disk("2m");
    // Ballast to free later: "space freed" is another file on the same disk going away.
    const std::string ballast = disk.path() + "/ballast";
    {
      std::ofstream f(ballast);
      f << std::string(640 * 1024, 'x');
    }
    const std::string base = kTokensPath;
    {
      Daemon d(
          {"--data-dir", disk.path() + "/data", "--threads", "2", "--writeback-interval-ms", "20"});
      const std::string admin = d.adminToken();
      REQUIRE(admin.size() == 33);

      Filled filled = fillUntilRefused(d, admin);
      const std::vector<std::string>& ids = filled.ids;
      const std::vector<std::string>& keys = filled.keys;
      const HttpReply& full = filled.refusal;
      INFO("created ", ids.size(), " tokens before the disk filled; answer: ", full.body);
      REQUIRE(full.status == 507);
      REQUIRE(!ids.empty());
      Json err = Json::parse(full.body);
      CHECK(err["message"] == "The key database is full.");
      CHECK(err["detail"].get<std::string>().find("No space left on device") != std::string::npos);

      // tokenctl in operator mode says so too, and exits non-zero.
      std::string allow;
      for (int i = 0; i < 128; ++i) {
        char id[37];
        std::snprintf(id, sizeof id, "ffffffff-0000-4000-8000-%012x", i);
        allow += std::string(i ? "," : "") + "workspace:" + id;
      }
      RunResult ctl =
          d.ctl({"tokens", "create", "--user", "admin", "--name", "ctl-full", "--allow", allow});
      CHECK(ctl.status != 0);
      CHECK(ctl.err.find("No space left on device") != std::string::npos);
      CHECK(ctl.out.empty());

      // Reads and verification go on.
      for (size_t i = 0; i < keys.size(); i += 3)
        CHECK(d.text("VERIFY " + keys[i]).rfind("OK ", 0) == 0);
      CHECK(d.text("VERIFY " + admin).rfind("OK ", 0) == 0);
      HttpReply list = httpRequest(d.socket(), "GET", base, admin);
      CHECK(list.status == 200);
      CHECK(Json::parse(list.body).size() == ids.size() + 1);
      DbCheck c = checkDatabase(d.dataDir());
      INFO(c.report());
      CHECK(c.problems.empty());

      // Space freed: writes resume, through the daemon and through tokenctl.
      REQUIRE(::unlink(ballast.c_str()) == 0);
      HttpReply again = httpRequest(d.socket(), "POST", base, admin, bigToken(5000));
      INFO(again.body);
      CHECK(again.status == 201);
      std::string fresh = d.ctlOk({"tokens", "create", "--user", "admin", "--name", "ctl-after"});
      CHECK(d.text("VERIFY " + fresh).rfind("OK ", 0) == 0);
      CHECK(d.stop() == 0);
      // The write-back failed while the disk was full; it said so without a line per round.
      std::string log = d.log();
      size_t lines = 0;
      for (size_t p = log.find("Failed to write back"); p != std::string::npos;
           p = log.find("Failed to write back", p + 1))
        ++lines;
      CHECK(lines <= 3);
    }
  }
}
