#include "tests/support/reference_tools.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>
#include <vector>
#include <unistd.h>

namespace thinpool_test {

namespace fs = std::filesystem;

std::string reference_tool(const std::string& name) {
    const char* dir = std::getenv("THINPOOL_REFERENCE_DIR");
    std::string d = dir && *dir ? dir : "/usr/sbin";
    return d + "/" + name;
}

bool reference_tools_available() {
    for (const char* t : {"thin_check", "thin_dump", "thin_restore"})
        if (::access(reference_tool(t).c_str(), X_OK) != 0)
            return false;
    return true;
}

bool reference_tools_required() {
    const char* v = std::getenv("THINPOOL_REQUIRE_REFERENCE");
    return v && std::string(v) == "1";
}

namespace {
// An unlinked temporary file to capture one output stream.
int capture_fd() {
    std::string tmpl = (fs::temp_directory_path() / "thinpool-out-XXXXXX").string();
    int fd = ::mkstemp(tmpl.data());
    if (fd < 0)
        throw std::runtime_error(std::string("mkstemp: ") + std::strerror(errno));
    ::unlink(tmpl.c_str());
    return fd;
}

std::string slurp(int fd) {
    std::string s;
    ::lseek(fd, 0, SEEK_SET);
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0)
        s.append(buf, static_cast<std::size_t>(n));
    return s;
}
} // namespace

command_result run_command(const std::vector<std::string>& argv) {
    if (argv.empty())
        throw std::runtime_error("run_command: no program");
    int out = capture_fd();
    int err = capture_fd();
    std::vector<char*> args;
    for (const auto& a : argv)
        args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);

    pid_t pid = ::fork();
    if (pid < 0) {
        ::close(out);
        ::close(err);
        throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
        int in = ::open("/dev/null", O_RDONLY);
        if (in >= 0)
            ::dup2(in, 0);
        ::dup2(out, 1);
        ::dup2(err, 2);
        ::execv(args[0], args.data());
        const char msg[] = "run_command: exec failed\n";
        (void)!::write(2, msg, sizeof msg - 1);
        ::_exit(127);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            throw std::runtime_error(std::string("waitpid: ") + std::strerror(errno));
    }
    command_result r;
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = slurp(out);
    r.err = slurp(err);
    ::close(out);
    ::close(err);
    return r;
}

scratch_dir::scratch_dir() {
    std::string tmpl = (fs::temp_directory_path() / "thinpool-test-XXXXXX").string();
    if (!::mkdtemp(tmpl.data()))
        throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
    path_ = tmpl;
}

scratch_dir::~scratch_dir() {
    if (std::getenv("THINPOOL_KEEP_TEMP"))
        return;
    std::error_code ec;
    fs::remove_all(path_, ec);
}

void make_sparse_file(const std::string& path, std::uint64_t bytes) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        throw std::runtime_error(path + ": " + std::strerror(errno));
    int rc = ::ftruncate(fd, static_cast<off_t>(bytes));
    int e = errno;
    ::close(fd);
    if (rc != 0)
        throw std::runtime_error(path + ": ftruncate: " + std::strerror(e));
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error(path + ": cannot open");
    std::ostringstream os;
    os << in.rdbuf();
    return os.str();
}

void write_file(const std::string& path, const std::string& contents) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << contents;
    if (!out)
        throw std::runtime_error(path + ": write failed");
}

bool files_equal(const std::string& x, const std::string& y) {
    std::ifstream a(x, std::ios::binary), b(y, std::ios::binary);
    if (!a || !b)
        return false;
    std::vector<char> ba(1 << 20), bb(1 << 20);
    while (a && b) {
        a.read(ba.data(), static_cast<std::streamsize>(ba.size()));
        b.read(bb.data(), static_cast<std::streamsize>(bb.size()));
        if (a.gcount() != b.gcount() || !std::equal(ba.begin(), ba.begin() + a.gcount(), bb.begin()))
            return false;
    }
    return !a && !b;
}

} // namespace thinpool_test
