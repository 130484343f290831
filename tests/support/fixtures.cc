#include "tests/support/fixtures.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <sys/wait.h>

namespace thinpool_test {

temp_dir::temp_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/thinpool-test-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
}

temp_dir::~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

std::string kernel_fixture_dir() {
    if (const char* env = std::getenv("THINPOOL_FIXTURES")) return env;
#ifdef THINPOOL_SOURCE_DIR
    std::string d = std::string(THINPOOL_SOURCE_DIR) + "/../shared/fixtures/kernel";
    if (std::filesystem::exists(d)) return d;
#endif
    return {};
}

bool fixtures_required() {
    const char* v = std::getenv("THINPOOL_REQUIRE_REFERENCE");
    return v && std::string(v) == "1";
}

int run_command(const std::string& cmd, std::string* out) {
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return -1;
    char buf[65536];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0)
        if (out) out->append(buf, n);
    int st = ::pclose(p);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

bool unpack_kernel_fixture(const std::string& name, const std::string& dest) {
    std::string dir = kernel_fixture_dir();
    if (dir.empty()) return false;
    std::string src = dir + "/" + name + ".bin.gz";
    if (!std::filesystem::exists(src)) return false;
    return run_command("gzip -dc '" + src + "' > '" + dest + "'") == 0;
}

} // namespace thinpool_test
