// Test support: counts every heap allocation in the process, to show a steady state makes none.
// Linking this (test_support) replaces the global operator new/delete of the test program.
#pragma once

namespace tokend::test {

// Allocations through operator new since the program started.
long allocations();

}  // namespace tokend::test
