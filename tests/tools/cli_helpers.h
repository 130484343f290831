#pragma once
// Shared by the thin_dump / thin_restore command-line tests: running our tools, fixtures, and
// checking that a man page documents every long option --help lists.
#include "tests/support/fixtures.h"
#include "tests/support/reference_tools.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace cli_test {

inline thinpool_test::command_result ours(const std::string& tool, std::vector<std::string> args) {
    args.insert(args.begin(), std::string(THINPOOL_BINARY_DIR) + "/" + tool);
    return thinpool_test::run_command(args);
}

inline thinpool_test::command_result theirs(const std::string& tool, std::vector<std::string> args) {
    args.insert(args.begin(), thinpool_test::reference_tool(tool));
    return thinpool_test::run_command(args);
}

inline std::string describe(const thinpool_test::command_result& r) {
    return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out.substr(0, 1500) + "\nstderr:\n" +
           r.err.substr(0, 1500);
}

inline const std::vector<std::string>& valid_fixtures() {
    static const std::vector<std::string> v = {"tmeta", "tmeta_with_metadata_snap", "tmeta_with_shared_internal_root",
                                               "tmeta_device_id_reuse", "tmeta_with_deleted_snapshot"};
    return v;
}

// Every --long-option in text (help output) appears in the roff man page (as \-\-long\-option).
inline void expect_man_page_documents(const std::string& man_path, const std::string& help) {
    std::string man = thinpool_test::read_file(man_path);
    std::regex long_opt("--([a-z][a-z-]*)");
    std::set<std::string> opts;
    for (std::sregex_iterator it(help.begin(), help.end(), long_opt), end; it != end; ++it) opts.insert((*it)[1]);
    EXPECT_GE(opts.size(), 5u);
    for (const auto& o : opts) {
        std::string roff = "\\-\\-";
        for (char c : o) roff += c == '-' ? std::string("\\-") : std::string(1, c);
        EXPECT_NE(man.find(roff), std::string::npos) << man_path << " does not document --" << o;
    }
}

} // namespace cli_test

// Unpacks a kernel fixture or skips (fails when fixtures are required).
#define UNPACK_FIXTURE_OR_SKIP(name, dest)                                                           \
    do {                                                                                           \
        if (!::thinpool_test::unpack_kernel_fixture(name, dest)) {                                 \
            if (::thinpool_test::fixtures_required()) FAIL() << "kernel fixture " << name << " missing"; \
            GTEST_SKIP() << "kernel fixture " << name << " not found";                             \
        }                                                                                          \
    } while (0)
