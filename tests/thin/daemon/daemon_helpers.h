#pragma once
// Shared by the daemon tests: small daemon options on a scratch directory, requests through the
// control socket, waiting with deadlines, a subprocess with a deadline, and a small JSON reader
// for checking the shape of `list --json` / `status --json`.
#include "tests/support/reference_tools.h"
#include "thin/daemon/config.h"
#include "thin/daemon/protocol.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <poll.h>
#include <string>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <variant>
#include <vector>

namespace daemon_test {

using namespace std::chrono_literals;
namespace td = thin::daemon;

constexpr std::uint64_t MD_BYTES = 16ull << 20;
constexpr std::uint64_t DATA_BYTES = 256ull << 20;

// Log lines of an in-process daemon, kept for assertions.
struct log_capture {
    std::mutex m;
    std::vector<std::string> lines;
    std::function<void(const std::string&)> sink() {
        return [this](const std::string& l) {
            std::lock_guard lk(m);
            lines.push_back(l);
        };
    }
    bool contains(const std::string& s) {
        std::lock_guard lk(m);
        for (const auto& l : lines)
            if (l.find(s) != std::string::npos) return true;
        return false;
    }
    std::string all() {
        std::lock_guard lk(m);
        std::string out;
        for (const auto& l : lines) out += l + "\n";
        return out;
    }
};

inline td::daemon_options small_options(const std::string& dir, log_capture* log = nullptr) {
    td::settings s;
    s.data_size = DATA_BYTES;
    s.metadata_size = MD_BYTES;
    s.nbd_socket = "";
    td::daemon_options o = td::resolve(dir, s);
    o.commit_period = std::chrono::hours(1);
    if (log) o.log = log->sink();
    return o;
}

// Polls pred until it holds or the deadline passes.
inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds deadline = 20s) {
    auto until = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < until) {
        if (pred()) return true;
        std::this_thread::sleep_for(5ms);
    }
    return pred();
}

inline td::response ask(const std::string& socket, const std::vector<std::string>& words) {
    return td::request(socket, words, 60s);
}

// ---- a subprocess with a deadline ----

class process {
public:
    // stdout/stderr go to files in dir (out_name.out / .err).
    process(const std::vector<std::string>& argv, const std::string& dir, const std::string& name,
            const std::string& cwd = {})
        : out_(dir + "/" + name + ".out"), err_(dir + "/" + name + ".err") {
        pid_ = ::fork();
        if (pid_ < 0) throw std::runtime_error("fork failed");
        if (pid_ == 0) {
            int in = ::open("/dev/null", O_RDONLY);
            int o = ::open(out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            int e = ::open(err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
            ::dup2(in, 0);
            ::dup2(o, 1);
            ::dup2(e, 2);
            if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(126);
            std::vector<char*> args;
            for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
            args.push_back(nullptr);
            ::execv(args[0], args.data());
            ::_exit(127);
        }
    }
    ~process() {
        if (!exited_) {
            ::kill(pid_, SIGKILL);
            wait(10s);
        }
    }
    void signal(int sig) { ::kill(pid_, sig); }
    // The exit status (128 + signal when killed), nullopt when still running at the deadline.
    std::optional<int> wait(std::chrono::milliseconds deadline) {
        if (exited_) return status_;
        auto until = std::chrono::steady_clock::now() + deadline;
        for (;;) {
            int st = 0;
            pid_t r = ::waitpid(pid_, &st, WNOHANG);
            if (r == pid_) {
                exited_ = true;
                status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                return status_;
            }
            if (std::chrono::steady_clock::now() >= until) return std::nullopt;
            std::this_thread::sleep_for(5ms);
        }
    }
    std::string out() const { return thinpool_test::read_file(out_); }
    std::string err() const { return thinpool_test::read_file(err_); }

private:
    pid_t pid_ = -1;
    bool exited_ = false;
    int status_ = -1;
    std::string out_, err_;
};

// Runs a command to completion within the deadline (killed and failed otherwise).
inline thinpool_test::command_result run_for(const std::vector<std::string>& argv, const std::string& dir,
                                             std::chrono::milliseconds deadline = 120s, const std::string& cwd = {}) {
    static int n = 0;
    process p(argv, dir, "cmd" + std::to_string(++n), cwd);
    auto st = p.wait(deadline);
    thinpool_test::command_result r;
    r.exit_code = st ? *st : -1;
    r.out = p.out();
    r.err = p.err();
    if (!st) ADD_FAILURE() << argv[0] << " did not finish within the deadline";
    return r;
}

inline std::string thinpool_binary() { return std::string(THINPOOL_BINARY_DIR) + "/thinpool"; }

// ---- a small JSON reader (tests only) ----

struct json;
using json_object = std::map<std::string, json>;
using json_array = std::vector<json>;
struct json {
    std::variant<std::nullptr_t, bool, std::uint64_t, std::string, json_array, json_object> v;
    bool is_null() const { return std::holds_alternative<std::nullptr_t>(v); }
    const json& operator[](const std::string& k) const {
        const auto& o = std::get<json_object>(v);
        auto it = o.find(k);
        if (it == o.end()) throw std::runtime_error("no key " + k);
        return it->second;
    }
    bool has(const std::string& k) const { return std::get<json_object>(v).count(k) > 0; }
    const json_array& array() const { return std::get<json_array>(v); }
    std::uint64_t num() const { return std::get<std::uint64_t>(v); }
    const std::string& str() const { return std::get<std::string>(v); }
    bool boolean() const { return std::get<bool>(v); }
};

class json_parser {
public:
    explicit json_parser(const std::string& s) : s_(s) {}
    json parse() {
        json j = value();
        ws();
        if (i_ != s_.size()) fail("trailing text");
        return j;
    }

private:
    [[noreturn]] void fail(const std::string& what) {
        throw std::runtime_error("JSON: " + what + " at offset " + std::to_string(i_));
    }
    void ws() {
        while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
    }
    bool eat(char c) {
        ws();
        if (i_ < s_.size() && s_[i_] == c) {
            ++i_;
            return true;
        }
        return false;
    }
    std::string string() {
        if (!eat('"')) fail("expected a string");
        std::string out;
        while (i_ < s_.size() && s_[i_] != '"') {
            char c = s_[i_++];
            if (c == '\\') {
                char e = s_.at(i_++);
                if (e == 'n') out += '\n';
                else if (e == 't') out += '\t';
                else if (e == 'r') out += '\r';
                else if (e == 'u') {
                    out += char(std::stoi(s_.substr(i_, 4), nullptr, 16));
                    i_ += 4;
                } else out += e;
            } else {
                out += c;
            }
        }
        if (!eat('"')) fail("unterminated string");
        return out;
    }
    json value() {
        ws();
        if (i_ >= s_.size()) fail("unexpected end");
        char c = s_[i_];
        if (c == '{') {
            ++i_;
            json_object o;
            if (eat('}')) return {o};
            do {
                std::string k = string();
                if (!eat(':')) fail("expected ':'");
                o[k] = value();
            } while (eat(','));
            if (!eat('}')) fail("expected '}'");
            return {o};
        }
        if (c == '[') {
            ++i_;
            json_array a;
            if (eat(']')) return {a};
            do a.push_back(value());
            while (eat(','));
            if (!eat(']')) fail("expected ']'");
            return {a};
        }
        if (c == '"') return {string()};
        if (s_.compare(i_, 4, "null") == 0) return i_ += 4, json{nullptr};
        if (s_.compare(i_, 4, "true") == 0) return i_ += 4, json{true};
        if (s_.compare(i_, 5, "false") == 0) return i_ += 5, json{false};
        if (std::isdigit(static_cast<unsigned char>(c))) {
            std::size_t j = i_;
            while (j < s_.size() && std::isdigit(static_cast<unsigned char>(s_[j]))) ++j;
            std::uint64_t n = std::stoull(s_.substr(i_, j - i_));
            i_ = j;
            return {n};
        }
        fail("unexpected character");
    }
    const std::string& s_;
    std::size_t i_ = 0;
};

inline json parse_json(const std::string& s) { return json_parser(s).parse(); }

} // namespace daemon_test
