// The test clock (base/clock.h): TOKEND_CLOCK_OFFSET moves clockNow() only in a build configured
// with -Dtest_clock=true, and libtokend never reads it. Meson runs this with the variable set to
// a day, in whichever kind of build it is.
#include "base/clock.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

namespace {

bool fileHas(const char* env, const std::string& needle) {
  const char* path = std::getenv(env);
  REQUIRE(path != nullptr);
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f);
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() > 1000);
  return bytes.find(needle) != std::string::npos;
}

}  // namespace

TEST_SUITE("Clock") {
  TEST_CASE("TOKEND_CLOCK_OFFSET moves the clock only in a -Dtest_clock=true build") {
    REQUIRE(std::getenv("TOKEND_CLOCK_OFFSET") != nullptr);
    CHECK(tokend::testClockCompiledIn() == (TOKEND_EXPECT_TEST_CLOCK != 0));
    const int64_t expected = tokend::testClockCompiledIn() ? 86400 : 0;
    CHECK(tokend::clockOffset() == expected);
    const int64_t before = tokend::unixNow();
    const int64_t now = tokend::clockNow();
    const int64_t after = tokend::unixNow();
    CHECK(now >= before + expected);
    CHECK(now <= after + expected);
  }

  TEST_CASE("tokend reads the variable only in a test build; libtokend never") {
    // getenv's argument: the name as a whole C string (a log line that mentions it is no read).
    const std::string name("TOKEND_CLOCK_OFFSET", sizeof "TOKEND_CLOCK_OFFSET");
    CHECK(fileHas("TOKEND", name) == tokend::testClockCompiledIn());
    CHECK(!fileHas("LIBTOKEND_SHARED", name));
    // The static archive bundles every internal object, base/clock.cc's too; no libtokend object
    // calls clockNow(), so a program never links it (tests/client/c_example.sh checks the
    // statically linked example), and in a build without the option it has nothing to read.
    if (!tokend::testClockCompiledIn()) CHECK(!fileHas("LIBTOKEND_STATIC", name));
  }
}
