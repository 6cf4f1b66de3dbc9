// Helpers for tests of process pools: a gate that holds a task in a worker process until
// the test opens it, with no timing involved, and a temporary directory.
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace procpool_test {

/// The value at `i` of the vector made for `seed`: every element of every such vector
/// differs from the others'.
inline std::uint64_t pattern(std::uint64_t seed, std::size_t i) {
    return (seed * 0x9E3779B97F4A7C15ULL) ^ (static_cast<std::uint64_t>(i) * 0xBF58476D1CE4E5B9ULL);
}

/// `n` elements of pattern(seed).
inline std::vector<std::uint64_t> patterned(std::size_t n, std::uint64_t seed) {
    std::vector<std::uint64_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = pattern(seed, i);
    return v;
}

/// A fresh directory under $TMPDIR (or /tmp), removed with everything in it at the end.
class temp_dir {
  public:
    temp_dir() {
        const char* base = std::getenv("TMPDIR");
        std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/procpool-test-XXXXXX";
        if (mkdtemp(tmpl.data()) == nullptr) std::abort();
        path_ = tmpl;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    /// The directory.
    const std::string& path() const noexcept { return path_; }

  private:
    std::string path_;
};

/// Holds a process-pool task until the test opens the gate. Files carry the two events
/// (the task started; the test opened the gate), so it works across processes.
/// Declare it after the pool: its destructor opens the gate, so a failing test cannot
/// leave a task waiting forever while the pool's destructor waits for it.
class file_gate {
  public:
    file_gate() = default;
    file_gate(const file_gate&) = delete;
    file_gate& operator=(const file_gate&) = delete;
    ~file_gate() { open(); }

    /// The argument to pass to `wait_then_return`.
    const std::string& path() const noexcept { return dir_.path(); }

    /// Waits until the task has started; a watchdog of minutes fails the test on a hang.
    void wait_started() const {
        const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(2);
        while (!std::filesystem::exists(dir_.path() + "/started")) {
            ASSERT_LT(std::chrono::steady_clock::now(), until) << "the gated task never started";
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }

    /// Lets the task return.
    void open() const { std::ofstream(dir_.path() + "/open") << 1; }

    /// The task: marks that it started, waits for the gate, returns `value`.
    static int wait_then_return(std::string dir, int value) {
        std::ofstream(dir + "/started") << 1;
        // A gate destroyed (its directory removed) counts as open: a test that failed
        // early must not leave the task waiting forever.
        while (!std::filesystem::exists(dir + "/open") && std::filesystem::exists(dir)) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return value;
    }

  private:
    temp_dir dir_;
};

/// Writes all of `s` to `fd` with write(2) (no stdio buffer), giving up on an error.
inline void write_all(int fd, const std::string& s) {
    std::size_t off = 0;
    while (off < s.size()) {
        const ssize_t k = ::write(fd, s.data() + off, s.size() - off);
        if (k <= 0) return;
        off += static_cast<std::size_t>(k);
    }
}

/// The number of open descriptors of process `pid` (from /proc/<pid>/fd; 0 if unreadable).
inline int fd_count_of(int pid) {
    int n = 0;
    const std::string path = "/proc/" + std::to_string(pid) + "/fd";
    if (DIR* d = opendir(path.c_str())) {
        while (const dirent* e = readdir(d)) n += e->d_name[0] != '.' ? 1 : 0;
        closedir(d);
    }
    return n;
}

/// The number of open descriptors of this process, for leak checks.
inline int open_fd_count() {
    return fd_count_of(static_cast<int>(getpid()));
}

/// True in an AddressSanitizer or ThreadSanitizer build (their runtimes need more address
/// space than an RLIMIT_AS test allows).
inline bool under_sanitizer() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
    return true;
#endif
#endif
    return false;
}

/// One process as /proc/<pid>/stat shows it.
struct proc_entry {
    int pid = 0;
    std::string comm;  ///< with its parentheses, as in /proc
    char state = 0;    ///< R, S, D, T, Z, X, ...
    int ppid = 0;
    int pgrp = 0;
};

/// Reads /proc/<pid>/stat; false if the process is gone.
inline bool read_proc(int pid, proc_entry& out) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(in, line)) return false;
    // pid (comm) state ppid pgrp ...: comm may hold spaces, so parse after the last ')'.
    const auto open = line.find('(');
    const auto close = line.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close < open) return false;
    out.pid = pid;
    out.comm = line.substr(open, close - open + 1);
    return std::sscanf(line.c_str() + close + 1, " %c %d %d", &out.state, &out.ppid,
                       &out.pgrp) == 3;
}

/// Every process now, from /proc.
inline std::vector<proc_entry> all_processes() {
    std::vector<proc_entry> out;
    if (DIR* d = opendir("/proc")) {
        while (const dirent* e = readdir(d)) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            proc_entry p;
            if (read_proc(std::atoi(e->d_name), p)) out.push_back(std::move(p));
        }
        closedir(d);
    }
    return out;
}

/// The thread count of this process, from /proc/self/status (-1 if unreadable).
inline int thread_count() {
    std::ifstream in("/proc/self/status");
    std::string key;
    while (in >> key) {
        if (key == "Threads:") {
            int n = 0;
            in >> n;
            return n;
        }
        std::string rest;
        std::getline(in, rest);
    }
    return -1;
}

}  // namespace procpool_test
