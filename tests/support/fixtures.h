#pragma once
// Helpers for tests: temp dirs and the kernel-written metadata fixtures in ../shared.
#include <string>

namespace thinpool_test {

// A fresh directory removed (with its contents) at destruction.
class temp_dir {
public:
    temp_dir();
    ~temp_dir();
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }
private:
    std::string path_;
};

// Directory of the kernel fixtures (THINPOOL_SOURCE_DIR/../shared/fixtures/kernel, or
// $THINPOOL_FIXTURES). Empty when not found.
std::string kernel_fixture_dir();

// True when the environment asks for fixtures and reference tools to be present
// (THINPOOL_REQUIRE_REFERENCE=1, set by scripts/test.sh): tests fail instead of skipping.
bool fixtures_required();

// Decompresses fixture NAME.bin.gz into dest; false when the fixture is missing.
bool unpack_kernel_fixture(const std::string& name, const std::string& dest);

// Runs a shell command, returns its exit status (-1 if it could not run); output to *out if given.
int run_command(const std::string& cmd, std::string* out = nullptr);

} // namespace thinpool_test
