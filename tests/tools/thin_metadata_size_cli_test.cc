// tools/thin_metadata_size: byte-identical to Debian's thin_metadata_size 0.9.0 (stdout, stderr,
// exit status) over hand-picked and generated argument lists - units, word abbreviations, -n
// variants, overflowing sizes, option errors - plus the documented examples, which need no
// reference binary.
#include "tests/support/reference_tools.h"
#include "tests/tools/cli_helpers.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <sstream>
#include <unistd.h>

using thinpool_test::command_result;

namespace {

const std::string TOOL = THINPOOL_BINARY_DIR "/thin_metadata_size";

command_result ours(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {TOOL};
    argv.insert(argv.end(), args.begin(), args.end());
    return thinpool_test::run_command(argv);
}

std::string reference_path() { return thinpool_test::reference_tool("thin_metadata_size"); }

// getopt diagnostics start with argv[0]: make both sides say "thin_metadata_size".
std::string normalise(std::string s, const std::string& argv0) {
    for (std::size_t at; (at = s.find(argv0 + ":")) != std::string::npos;) s.replace(at, argv0.size(), "thin_metadata_size");
    return s;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& a : v) s += "'" + a + "' ";
    return s;
}

class thin_metadata_size_cli : public ::testing::Test {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(TOOL)) FAIL() << TOOL << " is not built";
    }
    bool have_reference() {
        if (::access(reference_path().c_str(), X_OK) == 0) return true;
        return false;
    }
    void compare(const std::vector<std::string>& args) {
        command_result a = ours(args);
        std::vector<std::string> argv = {reference_path()};
        argv.insert(argv.end(), args.begin(), args.end());
        command_result b = thinpool_test::run_command(argv);
        EXPECT_EQ(a.exit_code, b.exit_code) << join(args);
        EXPECT_EQ(a.out, b.out) << join(args);
        EXPECT_EQ(normalise(a.err, TOOL), normalise(b.err, reference_path())) << join(args);
        ++compared_;
    }
    int compared_ = 0;
};

#define REQUIRE_REFERENCE_SIZE_TOOL()                                                              \
    do {                                                                                           \
        if (!have_reference()) {                                                                   \
            if (thinpool_test::reference_tools_required()) FAIL() << reference_path() << " missing"; \
            GTEST_SKIP() << "reference thin_metadata_size not installed";                         \
        }                                                                                          \
    } while (0)

} // namespace

TEST_F(thin_metadata_size_cli, documented_examples) {
    auto r = ours({"-b64k", "-s1t", "-m1000"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.out, "thin_metadata_size - 1073224 sectors estimated metadata area size for \"--block-size=64kibibytes "
                     "--pool-size=1tebibytes --max-thins=1000\"\n");
    EXPECT_EQ(ours({"-b64k", "-s1t", "-m1000", "-n"}).out, "1073224\n");
    EXPECT_EQ(ours({"-b64k", "-s1t", "-m1000", "-nshort", "-uM"}).out, "549.49M\n");
    EXPECT_EQ(ours({"-b64k", "-s1t", "-m1000", "-nlong", "-uG"}).out, "0.55gigabytes\n");
    EXPECT_EQ(ours({"-b128", "-s2097152", "-m1"}).out,
              "thin_metadata_size - 1056 sectors estimated metadata area size for \"--block-size=128sectors "
              "--pool-size=2097152sectors --max-thins=1\"\n");
    EXPECT_EQ(ours({"-b64k", "-s1t", "-m1000", "-ut", "-n"}).out, "5.00e-04\n");
}

TEST_F(thin_metadata_size_cli, errors) {
    struct {
        std::vector<std::string> args;
        std::string err;
    } cases[] = {
        {{}, "block size required!"},
        {{"-b64k"}, "pool size required!"},
        {{"-b64k", "-s1t"}, "max thins required!"},
        {{"-b100", "-s1t", "-m1"}, "block size must be 2^^N"},
        {{"-b128", "-s128", "-m1"}, "pool size must be larger than block size"},
        {{"-b64x", "-s1t", "-m1"}, "Invalid unit specifier!"},
        {{"-b128", "-s1t", "-m1", "-ux"}, "output unit specifier invalid!"},
        {{"-b128", "-b128", "-s1t", "-m1"}, "option already given!"},
        {{"-b128", "-s1t", "-m1", "-n", "-n"}, "-n already given!"},
        {{"-b128", "-s1t", "-m1", "-nfoo"}, "-n invalid option argument"},
    };
    for (const auto& c : cases) {
        auto r = ours(c.args);
        EXPECT_EQ(r.exit_code, 1) << join(c.args);
        EXPECT_EQ(r.out, "");
        EXPECT_EQ(r.err, "thin_metadata_size - " + c.err + "\n") << join(c.args);
    }
    auto r = ours({"--bogus"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("unrecognized option '--bogus'"), std::string::npos) << r.err;
}

TEST_F(thin_metadata_size_cli, help_version_and_man_page) {
    auto r = ours({"-h"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.out.rfind("Thin Provisioning Metadata Device Size Calculator.\nUsage: thin_metadata_size [options]\n", 0), 0u);
    EXPECT_EQ(ours({"--help"}).out, r.out);
    r = ours({"-V"});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_FALSE(r.out.empty());
    EXPECT_EQ(r.out.back(), '\n');
    cli_test::expect_man_page_documents(std::string(THINPOOL_SOURCE_DIR) + "/man/thin_metadata_size.8", ours({"-h"}).out);
}

TEST_F(thin_metadata_size_cli, identical_to_0_9_0_for_chosen_arguments) {
    REQUIRE_REFERENCE_SIZE_TOOL();
    const char* units = "bskKmMgGtTpPeEzZyY";
    for (const char* u = units; *u; ++u) {
        compare({"-b64k", "-s1t", "-m1000", std::string("-u") + *u});
        compare({"-b64k", "-s1t", "-m1000", std::string("-u") + *u, "-nshort"});
        compare({"-b64k", "-s1t", "-m1000", std::string("-u") + *u, "-nlong"});
        compare({std::string("-b1") + *u, "-s1t", "-m1"});
        compare({"-b128", std::string("-s3") + *u, "-m1"});
        compare({"-b128", "-s1t", std::string("-m2") + *u});
    }
    for (const char* w : {"", "k", "ki", "kil", "kib", "kilobytes", "meg", "mebi", "Meg", "g", "gig", "te", "pe", "ex", "ze",
                          "zet", "yo", "yot", "by", "sec", "bytesx", "S", "B", "1"}) {
        compare({"-b128", "-s1t", "-m1", "-u", w});
        compare({std::string("-b128") + w, "-s1t", "-m1"});
    }
    for (const char* n : {"-n", "-ns", "-nsh", "-nshort", "-nshortx", "-nl", "-nlon", "-nlong", "-nS", "-nfoo",
                          "--numeric-only", "--numeric-only=", "--numeric-only=long", "--nu=sh", "--n"})
        compare({"-b128", "-s1t", "-m1", n});
    for (const char* big : {"9223372036854775807", "9223372036854775808", "18446744073709551615", "18446744073709551616",
                            "99999999999999999999999", "36028797018963967", "36028797018963968", "36028797018963969",
                            "0064", "0", "-1", "+5", " 12", "1.5", "0x10", "k"}) {
        compare({"-b128", std::string("-s") + big, "-m1"});
        compare({"-b128", "-s1t", std::string("-m") + big});
        compare({"-b128", "-s1t", std::string("-m") + big + "b", "-um"});
        compare({std::string("-b") + big, "-s1t", "-m1"});
    }
    // Option order matters in 0.9.0: -u before a size without a unit changes its printed word;
    // a size that computes to 0 may be given again; -h and -V act where they appear.
    compare({"-ug", "-b128", "-s1000", "-m1"});
    compare({"-b128", "-ug", "-s1000", "-m1", "-uk"});
    compare({"-bk", "-b128", "-s1t", "-m1"});
    compare({"-b128", "-b0x", "-s1t", "-m1"});
    compare({"-s0k", "-s1000", "-b128", "-m1"});
    compare({"-b128", "-s1t", "-m1", "-h"});
    compare({"-bx", "-V"});
    compare({"-ux", "-bx"});
    compare({"-nfoo", "-ux"});
    compare({"-x"});
    compare({"-b"});
    compare({"-b128", "-s1t", "-m1", "-u"});
    compare({"--block-size", "128", "--pool-size", "1t", "--max-thins", "1", "--unit", "m", "--numeric-only"});
    compare({"--block", "128", "--pool", "1t", "--max", "1", "--un", "m", "--num=short"});
    compare({"-b128", "-s1t", "-m1", "extra", "args"});
    compare({"-n", "-b128", "-s1t", "-m1", "-u", "k", "--", "-x"});
}

TEST_F(thin_metadata_size_cli, identical_to_0_9_0_for_generated_arguments) {
    REQUIRE_REFERENCE_SIZE_TOOL();
    std::mt19937_64 rng(20240611);
    auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
    const std::string letters = "bskKmMgGtTpPeEzZyY";
    const std::vector<std::string> words = {"bytes",     "sectors",   "kibibytes", "kilobytes", "mebibytes", "megabytes",
                                            "gibibytes", "gigabytes", "tebibytes", "terabytes", "pebibytes", "petabytes",
                                            "ebibytes",  "exabytes",  "zebibytes", "zetabytes", "yobibytes", "yottabytes"};
    auto number = [&]() -> std::string {
        switch (pick(6)) {
        case 0: return std::to_string(std::vector<unsigned>{0, 1, 2, 3, 64, 100, 128, 256, 512, 1000, 1024, 4096}[pick(12)]);
        case 1: return std::to_string(rng() % 1000000);
        case 2: return std::to_string(rng() >> pick(64));
        case 3: return std::to_string((std::uint64_t(1) << pick(63)) + (pick(3) == 0 ? 1 : 0));
        case 4: return std::vector<std::string>{"18446744073709551616", "9223372036854775808", "1000000000000000000000", ""}[pick(4)];
        default: return std::to_string(rng() % 100000000000ull);
        }
    };
    auto unit = [&]() -> std::string {
        switch (pick(4)) {
        case 0: return "";
        case 1: return std::string(1, letters[pick(letters.size())]);
        case 2: {
            const auto& w = words[pick(words.size())];
            return w.substr(0, 1 + pick(w.size()));
        }
        default: return pick(2) ? "" : std::string(1, letters[pick(letters.size())]);
        }
    };
    const int runs = 600;
    for (int i = 0; i < runs; ++i) {
        std::vector<std::string> args;
        if (pick(10) < 8) {
            const char* blocks[] = {"128", "64k", "1", "512b", "2m", "1g", "256", "4096s", "1k", "100"};
            args.push_back(std::string("-b") + blocks[pick(10)]);
            args.push_back("-s" + number() + unit());
            args.push_back("-m" + number() + unit());
        }
        int extra = static_cast<int>(pick(3));
        for (int e = 0; e < extra; ++e) {
            switch (pick(5)) {
            case 0: args.push_back("-u" + unit()); break;
            case 1: args.push_back(std::vector<std::string>{"-n", "-ns", "-nl", "-nlong", "--numeric-only=short"}[pick(5)]); break;
            case 2: args.push_back("--pool-size=" + number() + unit()); break;
            case 3: args.push_back("-m" + number()); break;
            default: args.push_back("--unit=" + unit()); break;
            }
        }
        std::shuffle(args.begin(), args.end(), rng);
        compare(args);
        if (HasFailure()) break;
    }
    EXPECT_EQ(compared_, runs);
}
