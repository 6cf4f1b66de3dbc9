// Per-task output capture: the parent's and the worker's ends (see output.hpp).
#include "process/output.hpp"

#include <fcntl.h>
#include <stdio_ext.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <new>
#include <string>

#include "process/channel.hpp"
#include "procpool/process_pool.hpp"

namespace procpool {

std::string output_truncation_marker(std::size_t dropped) {
    return "\n[procpool: output truncated: " + std::to_string(dropped) + " bytes dropped]\n";
}

namespace detail {
std::shared_ptr<const task_output> captured_output(const state_base& s) noexcept {
    // Process tasks are remote_task<R, process_task_base>: a cross-cast from the state.
    const auto* t = dynamic_cast<const process_task_base*>(&s);
    return t != nullptr ? t->output : nullptr;
}
}  // namespace detail

}  // namespace procpool

namespace procpool::process {

namespace {

// Past the limit, the parent frees a file's pages only once they pass this much, so a
// task that writes a little too much costs no system calls for it.
constexpr std::uint64_t punch_slack = std::uint64_t{1} << 20;

std::uint64_t page_aligned(std::uint64_t n) noexcept {
    return (n + 4095) & ~std::uint64_t{4095};
}

// Reads at most `n` bytes from offset 0 of `fd` into `dst`; returns how many it got.
// `err`: the errno that stopped it early, 0 if it was the end of the file.
std::uint64_t read_prefix(int fd, std::byte* dst, std::uint64_t n, int& err) noexcept {
    std::uint64_t off = 0;
    err = 0;
    while (off < n) {
        const ssize_t k = pread(fd, dst + off, n - off, static_cast<off_t>(off));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) err = errno;
        if (k <= 0) break;
        off += static_cast<std::uint64_t>(k);
    }
    return off;
}

// One stream of a dead worker's output, as text with its truncation marker.
bool read_stream(int fd, std::size_t limit, std::string& text) {
    struct stat st {};
    if (fstat(fd, &st) != 0 || st.st_size <= 0) return false;
    const auto total = static_cast<std::uint64_t>(st.st_size);
    text.resize(std::min<std::uint64_t>(total, limit));
    int err = 0;
    const std::uint64_t got =
        read_prefix(fd, reinterpret_cast<std::byte*>(text.data()), text.size(), err);
    text.resize(got);
    if (total <= limit) return false;
    text += output_truncation_marker(total - limit);
    return true;
}

// Flushes what stdio and the standard streams buffer and clears their error states (a
// task that closed fd 1 leaves std::cout failed, which would silence later tasks).
void flush_stdio() noexcept {
    std::fflush(nullptr);
    try {
        std::cout.flush();
        std::cerr.flush();
        std::clog.flush();
        std::cout.clear();
        std::cerr.clear();
        std::clog.clear();
    } catch (...) {  // NOLINT(bugprone-empty-catch): a task made them throw; nothing to keep
    }
    clearerr(stdout);
    clearerr(stderr);
}

}  // namespace

output_files make_output_files() {
    output_files f;
    // No MFD_ALLOW_SEALING: a task cannot seal the files (F_SEAL_SHRINK would stop the
    // worker from emptying them between tasks).
    f.out.reset(memfd_create("procpool-stdout", MFD_CLOEXEC));
    f.err.reset(memfd_create("procpool-stderr", MFD_CLOEXEC));
    if (!f.out || !f.err) ipc::throw_errno("memfd_create for captured output");
    // O_APPEND (a flag of the open file, shared with the worker and what it starts):
    // every writer appends, and a file emptied between tasks is written from its start.
    for (int fd : {f.out.get(), f.err.get()}) {
        if (fcntl(fd, F_SETFL, O_APPEND) != 0) ipc::throw_errno("fcntl for captured output");
    }
    return f;
}

std::shared_ptr<const task_output> read_output(const output_files& f, std::size_t limit) noexcept {
    try {
        task_output o;
        const bool out_cut = read_stream(f.out.get(), limit, o.out);
        const bool err_cut = read_stream(f.err.get(), limit, o.err);
        if (o.out.empty() && o.err.empty()) return empty_output();
        o.truncated = out_cut || err_cut;
        return std::make_shared<const task_output>(std::move(o));
    } catch (...) {
        return nullptr;
    }
}

bound_result bound_output(const output_files& f, std::size_t limit) noexcept {
    bound_result r;
    const std::uint64_t from = page_aligned(limit);
    for (int fd : {f.out.get(), f.err.get()}) {
        struct stat st {};
        if (fstat(fd, &st) != 0) continue;
        const auto size = static_cast<std::uint64_t>(st.st_size);
        if (size <= limit) continue;
        r.over_limit = true;
        const auto held = static_cast<std::uint64_t>(st.st_blocks) * 512;
        if (size > from && held > from + punch_slack &&
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(from),
                      static_cast<off_t>(size - from)) == 0) {
            r.punched = true;
        }
    }
    return r;
}

std::shared_ptr<const task_output> parse_output(const std::byte*& data, std::size_t& size,
                                                std::size_t limit) {
    output_header h{};
    if (size < sizeof h) throw protocol_violation("an output section shorter than its header");
    std::memcpy(&h, data, sizeof h);
    if (h.out_len > limit || h.err_len > limit) {
        throw protocol_violation("captured output longer than the pool's output_limit");
    }
    if (h.out_total < h.out_len || h.err_total < h.err_len) {
        throw protocol_violation("an output section whose lengths disagree");
    }
    if (h.out_len + h.err_len > size - sizeof h) {
        throw protocol_violation("an output section longer than its completion");
    }
    const auto* text = reinterpret_cast<const char*>(data + sizeof h);
    const std::size_t used = sizeof h + h.out_len + h.err_len;
    data += used;
    size -= used;
    if (h.out_total == 0 && h.err_total == 0) return empty_output();
    try {
        task_output o;
        o.out.assign(text, h.out_len);
        o.err.assign(text + h.out_len, h.err_len);
        if (h.out_total > h.out_len) o.out += output_truncation_marker(h.out_total - h.out_len);
        if (h.err_total > h.err_len) o.err += output_truncation_marker(h.err_total - h.err_len);
        o.truncated = h.out_total > h.out_len || h.err_total > h.err_len;
        return std::make_shared<const task_output>(std::move(o));
    } catch (const std::bad_alloc&) {
        return nullptr;
    }
}

const std::shared_ptr<const task_output>& empty_output() noexcept {
    static const std::shared_ptr<const task_output> none = std::make_shared<const task_output>();
    return none;
}

// ---- worker ------------------------------------------------------------------------

void output_capture::discard_inherited() noexcept {
    __fpurge(stdout);
    __fpurge(stderr);
}

bool output_capture::start(int out, int err, std::uint64_t limit) noexcept {
    // What the initializer printed (and what a fork-method worker copied from the
    // parent's buffers) goes where it went before, not into the first task's output.
    flush_stdio();
    limit_ = limit;
    out_.fd = 1;
    err_.fd = 2;
    // Private copies above 2, close-on-exec: the task's children inherit only fd 1 and 2.
    for (auto [s, fd] : {std::pair{&out_, out}, std::pair{&err_, err}}) {
        struct stat st {};
        const int p = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (p < 0 || fstat(p, &st) != 0) return false;
        s->priv = p;
        s->dev = st.st_dev;
        s->ino = st.st_ino;
    }
    if (out > 2) ::close(out);
    if (err > 2 && err != out) ::close(err);
    return dup2(out_.priv, 1) == 1 && dup2(err_.priv, 2) == 2;
}

// True if s.fd still is the capture file; notes its size.
bool output_capture::check(stream& s) noexcept {
    struct stat st {};
    if (fstat(s.fd, &st) != 0 || st.st_dev != s.dev || st.st_ino != s.ino) return false;
    s.size = static_cast<std::uint64_t>(st.st_size);
    return true;
}

// Points s.fd at the capture file again (the task closed or replaced it). False if the
// private copy is gone too.
bool output_capture::restore(stream& s) noexcept {
    struct stat st {};
    if (fstat(s.priv, &st) != 0 || st.st_dev != s.dev || st.st_ino != s.ino) return false;
    return dup2(s.priv, s.fd) == s.fd;
}

// Reads the first `n` bytes of the file through s.fd (checked by check: a task's own
// descriptors are never read), once more after restoring it if the task left a
// descriptor of the file that cannot be read (opened write-only).
std::uint64_t output_capture::read_into(stream& s, std::byte* dst, std::uint64_t n) noexcept {
    int err = 0;
    std::uint64_t got = read_prefix(s.fd, dst, n, err);
    if (got == 0 && (err == EBADF || err == EINVAL) && restore(s)) {
        got = read_prefix(s.fd, dst, n, err);
    }
    return got;
}

bool output_capture::collect(std::vector<std::byte>& section) noexcept {
    flush_stdio();
    bool restored = false;
    for (stream* s : {&out_, &err_}) {
        if (check(*s)) continue;
        s->size = 0;
        if (!restore(*s)) {
            broken_ = true;
        } else {
            restored = true;
        }
    }
    if (restored) {
        // What stdio could not write through a closed fd may still be buffered.
        flush_stdio();
        for (stream* s : {&out_, &err_}) {
            if (!broken_ && !check(*s)) broken_ = true;
        }
    }
    if (broken_ || (out_.size == 0 && err_.size == 0)) return false;
    const std::uint64_t on = std::min(out_.size, limit_);
    const std::uint64_t en = std::min(err_.size, limit_);
    try {
        section.resize(sizeof(output_header) + on + en);
    } catch (...) {
        return false;  // the files are still emptied (reset): never carried to the next task
    }
    std::byte* text = section.data() + sizeof(output_header);
    const std::uint64_t got_out = read_into(out_, text, on);
    const std::uint64_t got_err = read_into(err_, text + got_out, en);
    // A short read (a process the task started emptied the file meanwhile) claims no drop.
    const output_header h{got_out, got_out < on ? got_out : out_.size, got_err,
                          got_err < en ? got_err : err_.size};
    std::memcpy(section.data(), &h, sizeof h);
    section.resize(sizeof h + got_out + got_err);
    return true;
}

// Empties the file behind s.fd; once more after restoring s.fd if that failed.
bool output_capture::empty(stream& s) noexcept {
    for (int attempt = 0; attempt < 2; ++attempt) {
        // The offset matters to a writer that cleared O_APPEND; it is shared with them.
        if (ftruncate(s.fd, 0) == 0 && lseek(s.fd, 0, SEEK_SET) == 0) {
            s.size = 0;
            return true;
        }
        if (attempt == 0 && !restore(s)) return false;
    }
    return false;
}

bool output_capture::reset() noexcept {
    if (broken_) return false;
    for (stream* s : {&out_, &err_}) {
        if (s->size != 0 && !empty(*s)) return false;
    }
    return true;
}

}  // namespace procpool::process
