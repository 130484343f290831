#pragma once
// Running the reference thin-provisioning-tools (Debian's 0.9.0 thin_check, thin_dump,
// thin_restore, ...) as an oracle in tests, plus a scratch directory for their files.
//
// The tools are looked up in $THINPOOL_REFERENCE_DIR, default /usr/sbin. A test that needs them
// starts with REQUIRE_REFERENCE_TOOLS(): it skips when they are missing, unless
// THINPOOL_REQUIRE_REFERENCE=1 is set, in which case it fails.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace thinpool_test {

// Full path of a reference tool, e.g. reference_tool("thin_dump").
std::string reference_tool(const std::string& name);
// thin_check, thin_dump and thin_restore are all present and executable.
bool reference_tools_available();
bool reference_tools_required();

struct command_result {
    int exit_code = -1;  // 128 + signal number when killed by a signal
    std::string out;
    std::string err;
};

// fork/exec of argv[0] with the given arguments (no shell), stdin from /dev/null, stdout and
// stderr captured. Throws std::runtime_error if the program cannot be started at all.
command_result run_command(const std::vector<std::string>& argv);

// A fresh directory under the system temporary directory, removed with its contents on
// destruction (kept when THINPOOL_KEEP_TEMP is set, for debugging).
class scratch_dir {
public:
    scratch_dir();
    ~scratch_dir();
    scratch_dir(const scratch_dir&) = delete;
    scratch_dir& operator=(const scratch_dir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
    std::filesystem::path path_;
};

// Creates (or truncates) a sparse file of `bytes` bytes.
void make_sparse_file(const std::string& path, std::uint64_t bytes);
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& contents);
// Byte-for-byte comparison, streamed (metadata files can be large).
bool files_equal(const std::string& a, const std::string& b);

} // namespace thinpool_test

#define REQUIRE_REFERENCE_TOOLS()                                                                  \
    do {                                                                                           \
        if (!::thinpool_test::reference_tools_available()) {                                       \
            if (::thinpool_test::reference_tools_required())                                       \
                FAIL() << "reference tools (thin_check, thin_dump, thin_restore) not found in "   \
                       << ::thinpool_test::reference_tool("") << " and THINPOOL_REQUIRE_REFERENCE=1"; \
            GTEST_SKIP() << "reference thin-provisioning-tools not installed";                     \
        }                                                                                          \
    } while (0)
