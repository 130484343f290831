#pragma once
// Shared by the thin_delta, thin_ls and thin_rmap command-line tests: running our tool and the
// reference (Debian 0.9.0) one on the same input, the kernel fixtures and generated pools, the
// contract every tool keeps (help, version, bad option, missing/unreadable/tiny/XML/corrupt input),
// and the man page agreeing with --help.
#include "thin/generate/generator.h"

#include "tests/support/fixtures.h"
#include "tests/support/reference_tools.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <unistd.h>

namespace readonly_tool_test {

using thinpool_test::command_result;

inline std::string ours(const std::string& tool) { return std::string(THINPOOL_BINARY_DIR) + "/" + tool; }

inline command_result run_ours(const std::string& tool, std::vector<std::string> args) {
    args.insert(args.begin(), ours(tool));
    return thinpool_test::run_command(args);
}

inline command_result run_reference(const std::string& tool, std::vector<std::string> args) {
    args.insert(args.begin(), thinpool_test::reference_tool(tool));
    return thinpool_test::run_command(args);
}

inline bool reference_available(const std::string& tool) {
    return ::access(thinpool_test::reference_tool(tool).c_str(), X_OK) == 0;
}

inline std::string join(const std::vector<std::string>& args) {
    std::string s;
    for (const auto& a : args) s += a + " ";
    return s;
}

// The first line where two outputs differ (whole outputs can be megabytes).
inline std::string first_difference(const std::string& got, const std::string& want) {
    if (got == want) return {};
    std::istringstream a(got), b(want);
    std::string la, lb;
    for (std::size_t line = 1;; ++line) {
        bool ha = static_cast<bool>(std::getline(a, la)), hb = static_cast<bool>(std::getline(b, lb));
        if (!ha && !hb) return "outputs differ only in the final newline";
        if (la != lb || ha != hb)
            return "line " + std::to_string(line) + ":\n  ours:      " + (ha ? la : "<end>") +
                   "\n  reference: " + (hb ? lb : "<end>");
    }
}

// Same exit status and byte-identical stdout.
inline void expect_same_as_reference(const std::string& tool, const std::vector<std::string>& args) {
    auto o = run_ours(tool, args);
    auto r = run_reference(tool, args);
    EXPECT_EQ(o.exit_code, r.exit_code) << tool << " " << join(args) << "\nours: " << o.err << "\nreference: " << r.err;
    EXPECT_EQ(first_difference(o.out, r.out), "") << tool << " " << join(args);
    if (r.exit_code == 0) {
        EXPECT_FALSE(o.out.empty() && !r.out.empty());
    }
}

// The kernel fixtures, unpacked once per test program.
class fixtures {
public:
    static fixtures& get() {
        static fixtures f;
        return f;
    }
    // Path of the unpacked fixture, or "" when missing.
    std::string path(const std::string& name) {
        auto it = paths_.find(name);
        if (it != paths_.end()) return it->second;
        std::string p = dir_.file(name + ".bin");
        if (!thinpool_test::unpack_kernel_fixture(name, p)) p.clear();
        paths_[name] = p;
        return p;
    }
    thinpool_test::scratch_dir& dir() { return dir_; }

private:
    thinpool_test::scratch_dir dir_;
    std::map<std::string, std::string> paths_;
};

// A generated pool (thin_generate_metadata's shapes) and its device ids.
struct generated {
    std::string path;
    std::vector<std::uint64_t> devs;
    bool held = false;
};

inline generated generate(const std::string& shape) {
    generated g;
    g.path = fixtures::get().dir().file("gen-" + shape + ".bin");
    auto s = thin::generate::named_shape(shape);
    if (!s) throw std::runtime_error("no shape " + shape);
    auto result = thin::generate::generate_file(g.path, *s);
    for (const auto& [dev, e] : result.gen->record().devices) g.devs.push_back(dev);
    g.held = result.gen->held_snapshot().has_value();
    return g;
}

#define REQUIRE_REFERENCE_TOOL(tool)                                                              \
    do {                                                                                          \
        if (!::readonly_tool_test::reference_available(tool)) {                                  \
            if (::thinpool_test::fixtures_required())                                             \
                FAIL() << ::thinpool_test::reference_tool(tool) << " not found and THINPOOL_REQUIRE_REFERENCE=1"; \
            GTEST_SKIP() << ::thinpool_test::reference_tool(tool) << " not installed";            \
        }                                                                                         \
    } while (0)

#define FIXTURE_PATH(var, name)                                                                   \
    std::string var = ::readonly_tool_test::fixtures::get().path(name);                           \
    do {                                                                                          \
        if (var.empty()) {                                                                        \
            if (::thinpool_test::fixtures_required()) FAIL() << "kernel fixture " << name << " missing"; \
            GTEST_SKIP() << "kernel fixture " << name << " missing";                              \
        }                                                                                         \
    } while (0)

// ---- the contract every read-only tool keeps ----

inline void check_help_and_version(const std::string& tool) {
    for (const char* opt : {"--help", "-h"}) {
        auto r = run_ours(tool, {opt});
        EXPECT_EQ(r.exit_code, 0) << opt;
        EXPECT_EQ(r.err, "");
        EXPECT_EQ(r.out.rfind("Usage: " + tool + " ", 0), 0u) << r.out;
    }
    for (const char* opt : {"--version", "-V"}) {
        auto r = run_ours(tool, {opt});
        EXPECT_EQ(r.exit_code, 0);
        EXPECT_EQ(r.out, std::string(THINPOOL_VERSION) + "\n");
    }
}

// Every long option --help lists is in the man page (roff escapes its dashes), and the man page
// has the usual sections.
inline void check_man_page(const std::string& tool) {
    std::ifstream in(std::string(THINPOOL_SOURCE_DIR) + "/man/" + tool + ".8");
    ASSERT_TRUE(in) << "man/" << tool << ".8 missing";
    std::stringstream ss;
    ss << in.rdbuf();
    std::string man = ss.str();
    EXPECT_NE(man.find(".TH " + std::string(tool == "thin_ls" ? "THIN_LS" : tool == "thin_rmap" ? "THIN_RMAP" : "THIN_DELTA")),
              std::string::npos);
    for (const char* section : {".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS", ".SH EXIT STATUS"})
        EXPECT_NE(man.find(section), std::string::npos) << section;
    auto help = run_ours(tool, {"--help"}).out;
    std::regex long_opt("--([a-z][a-z0-9-]*)");
    std::set<std::string> opts;
    for (std::sregex_iterator it(help.begin(), help.end(), long_opt), end; it != end; ++it) opts.insert((*it)[1]);
    EXPECT_GE(opts.size(), 3u);
    for (const auto& o : opts) {
        std::string roff = "\\-\\-";
        for (char c : o) roff += c == '-' ? std::string("\\-") : std::string(1, c);
        EXPECT_NE(man.find(roff), std::string::npos) << "--" << o << " is not in man/" << tool << ".8";
    }
}

// args_before_input: whatever the tool needs besides the input to get as far as opening it.
inline void check_bad_inputs(const std::string& tool, const std::vector<std::string>& args_before_input) {
    auto& dir = fixtures::get().dir();
    auto with = [&](const std::string& input) {
        auto a = args_before_input;
        a.push_back(input);
        return run_ours(tool, a);
    };

    auto r = run_ours(tool, {"--no-such-option"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("no-such-option"), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");

    std::string missing = dir.file("does-not-exist");
    r = with(missing);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(missing), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");

    std::string tiny = dir.file("tiny");
    thinpool_test::write_file(tiny, std::string(100, '\0'));
    r = with(tiny);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("too small"), std::string::npos) << r.err;

    std::string empty = dir.file("empty");
    thinpool_test::write_file(empty, "");
    r = with(empty);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;

    std::string xml = dir.file("meta.xml");
    thinpool_test::write_file(xml, "<superblock uuid=\"\" time=\"0\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"100\">\n</superblock>\n");
    r = with(xml);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("XML"), std::string::npos) << r.err;

    std::string zeros = dir.file("zeros");
    thinpool_test::make_sparse_file(zeros, 1 << 20);
    r = with(zeros);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("all zeros"), std::string::npos) << r.err;

    // A superblock with the magic but a bad checksum.
    std::string bad = dir.file("bad-csum");
    std::string block(4096 * 16, '\0');
    const unsigned char magic[8] = {0xba, 0x52, 0x9c, 0x01, 0, 0, 0, 0};
    std::copy(magic, magic + 8, block.begin() + 32);
    block[0] = 1;
    thinpool_test::write_file(bad, block);
    r = with(bad);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("checksum"), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
}

} // namespace readonly_tool_test
