// The journal file: framing, checks, locking and appending (see procpool/journal.hpp for
// the format).
#include "procpool/journal.hpp"

#include <cxxabi.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

namespace procpool {

namespace {

constexpr std::array<char, 8> magic = {'P', 'P', 'J', 'O', 'U', 'R', 'N', 'L'};
constexpr std::uint32_t format_version = 1;
constexpr std::size_t size_field = sizeof(std::uint64_t);
constexpr std::size_t check_field = sizeof(std::uint64_t);
// Record status byte: 0 for a value, 1 + failure_kind for a failure.
constexpr std::uint8_t status_ok = 0;
constexpr std::uint8_t last_kind = static_cast<std::uint8_t>(failure_kind::other);

std::string errno_text(int e) { return std::strerror(e); }

std::string hex(std::uint64_t v) {
    std::ostringstream s;
    s << "0x" << std::hex << v;
    return s.str();
}

std::string demangle(const char* mangled) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> name(
        abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
    // typeid(void).name() is "v", which __cxa_demangle does not take as a type by itself.
    if (std::strcmp(mangled, "v") == 0) return "void";
    return status == 0 && name ? std::string(name.get()) : std::string(mangled);
}

/// Reads exactly `n` bytes at `offset`; false at end of file.
bool read_at(int fd, std::uint64_t offset, void* p, std::size_t n, const std::string& path) {
    auto* out = static_cast<char*>(p);
    while (n > 0) {
        const ssize_t got = ::pread(fd, out, n, static_cast<off_t>(offset));
        if (got < 0) {
            if (errno == EINTR) continue;
            throw error("procpool: reading journal " + path + " failed: " + errno_text(errno));
        }
        if (got == 0) return false;
        out += got;
        offset += static_cast<std::uint64_t>(got);
        n -= static_cast<std::size_t>(got);
    }
    return true;
}

/// Writes all `n` bytes (one write() unless it is cut short); 0 or the errno.
int write_all(int fd, const std::byte* p, std::size_t n) {
    while (n > 0) {
        const ssize_t put = ::write(fd, p, n);
        if (put < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        p += put;
        n -= static_cast<std::size_t>(put);
    }
    return 0;
}

std::uint64_t frame_check(std::span<const std::byte> size_and_payload) {
    return detail::journal_hash(size_and_payload);
}

/// What a scan of a file found.
struct scan_result {
    enum class state { ok, not_journal, no_header, bad_header } what = state::ok;
    journal_contents contents;
};

journal_header decode_header(wire::reader& in) {
    journal_header h;
    h.version = wire::load<std::uint32_t>(in);
    if (h.version != format_version) return h;  // the rest is another format's
    h.task_count = wire::load<std::uint64_t>(in);
    h.inputs_hash = wire::load<std::uint64_t>(in);
    h.result_type = wire::load<std::string>(in);
    h.created_unix_ns = wire::load<std::int64_t>(in);
    return h;
}

journal_record decode_record(wire::reader& in) {
    journal_record r;
    r.index = wire::load<std::uint64_t>(in);
    r.input_hash = wire::load<std::uint64_t>(in);
    const auto status = wire::load<std::uint8_t>(in);
    if (status > last_kind + 1) throw serialization_error("bad record status");
    if (status != status_ok) r.failure = static_cast<failure_kind>(status - 1);
    r.message = wire::load<std::string>(in);
    r.duration_ns = wire::load<std::int64_t>(in);
    r.attempts = wire::load<std::uint32_t>(in);
    r.value.assign(in.data(), in.data() + in.remaining());
    return r;
}

/// Reads the frames of the journal open as `fd`: the header, then every whole record up
/// to the first frame that is cut short, fails its check or does not decode.
scan_result scan(int fd, const std::string& path) {
    scan_result res;
    journal_contents& c = res.contents;
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        throw error("procpool: reading journal " + path + " failed: " + errno_text(errno));
    }
    c.file_bytes = static_cast<std::uint64_t>(st.st_size);

    std::array<char, magic.size()> head{};
    const auto have =
        static_cast<std::size_t>(std::min<std::uint64_t>(c.file_bytes, magic.size()));
    if (!read_at(fd, 0, head.data(), have, path)) {
        res.what = scan_result::state::no_header;  // it shrank meanwhile
        return res;
    }
    if (std::memcmp(head.data(), magic.data(), have) != 0) {
        res.what = scan_result::state::not_journal;
        return res;
    }
    if (have < magic.size()) {  // an empty file, or the magic's write was cut short
        res.what = scan_result::state::no_header;
        return res;
    }

    std::uint64_t offset = magic.size();
    std::vector<std::byte> frame;
    bool header = true;
    for (;;) {
        const std::uint64_t left = c.file_bytes - offset;
        if (left == 0) break;
        std::string problem;
        bool cut_short = false;  // as a write cut short leaves it (or a garbled size)
        std::uint64_t size = 0;
        if (left < size_field + check_field || !read_at(fd, offset, &size, size_field, path) ||
            size > left - size_field - check_field) {
            cut_short = true;
        } else {
            frame.resize(size_field + static_cast<std::size_t>(size) + check_field);
            cut_short = !read_at(fd, offset, frame.data(), frame.size(), path);
        }
        if (cut_short) problem = "a record cut short (or a garbled size field)";
        if (problem.empty()) {
            std::uint64_t check = 0;
            std::memcpy(&check, frame.data() + frame.size() - check_field, check_field);
            const std::span<const std::byte> body(frame.data(), frame.size() - check_field);
            if (check != frame_check(body)) problem = "a record whose checksum does not match";
        }
        if (problem.empty()) {
            wire::reader in(frame.data() + size_field, static_cast<std::size_t>(size));
            try {
                if (header) {
                    c.header = decode_header(in);
                    if (c.header.version == format_version && in.remaining() != 0) {
                        throw serialization_error("trailing bytes");
                    }
                } else {
                    c.records.push_back(decode_record(in));
                }
            } catch (const serialization_error&) {
                problem = "a record that does not decode";
            }
        }
        if (!problem.empty()) {
            if (header) {
                // Cut short: its run was killed while starting the journal. Anything else
                // is damage, and guessing could throw away a whole journal.
                res.what = cut_short ? scan_result::state::no_header
                                     : scan_result::state::bad_header;
                return res;
            }
            c.tail_note = "the last " + std::to_string(left) + " bytes (from offset " +
                          std::to_string(offset) + ") are ignored: " + problem +
                          " (a run killed while writing one leaves that)";
            break;
        }
        offset += frame.size();
        if (header) {
            header = false;
            if (c.header.version != format_version) break;
        }
        c.valid_bytes = offset;
    }
    if (header) res.what = scan_result::state::no_header;
    return res;
}

std::string restart_hint(const std::string& path) {
    return "pass journal_mode::restart to start over (or delete " + path + ")";
}

}  // namespace

journal_contents read_journal(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw error("procpool: cannot open journal " + path + ": " + errno_text(errno));
    }
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } close_fd{fd};
    scan_result res = scan(fd, path);
    if (res.what == scan_result::state::not_journal) {
        throw invalid_argument("procpool: " + path + " is not a procpool journal");
    }
    if (res.what == scan_result::state::bad_header) {
        throw invalid_argument("procpool: journal " + path + " has a damaged header");
    }
    if (res.what == scan_result::state::no_header) {
        throw invalid_argument("procpool: journal " + path +
                               " has no whole header: it is empty, or its run was killed "
                               "before it wrote one");
    }
    if (res.contents.header.version != format_version) {
        throw invalid_argument("procpool: journal " + path + " has format version " +
                               std::to_string(res.contents.header.version) +
                               ", this build reads version " + std::to_string(format_version));
    }
    return std::move(res.contents);
}

namespace detail {

std::uint64_t journal_hash(std::span<const std::byte> bytes, std::uint64_t seed) noexcept {
    std::uint64_t h = seed;
    for (const std::byte b : bytes) {
        h ^= static_cast<std::uint64_t>(b);
        h *= 0x100000001b3ULL;
    }
    return h;
}

std::uint64_t journal_inputs_hash(std::span<const std::uint64_t> input_hashes) noexcept {
    const std::uint64_t n = input_hashes.size();
    const std::uint64_t h = journal_hash(std::as_bytes(std::span(&n, 1)));
    return journal_hash(std::as_bytes(input_hashes), h);
}

void journal_needs_serializable(const char* mangled) {
    throw invalid_argument(
        "procpool: run_options::journal needs serializable task arguments and results "
        "(procpool/wire.hpp): " +
        demangle(mangled) + " is not");
}

void journal_cannot_save(std::size_t index, const char* why) {
    throw invalid_argument("procpool: run_options::journal cannot store task " +
                           std::to_string(index) + "'s arguments: " + why);
}

journal_file::journal_file(const std::string& path, journal_mode mode, bool sync,
                           std::uint64_t task_count, std::uint64_t inputs_hash,
                           const char* result_mangled)
    : path_(path), sync_(sync) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) {
        throw error("procpool: cannot open journal " + path + ": " + errno_text(errno));
    }
    try {
        if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            if (errno == EWOULDBLOCK) {
                throw invalid_argument("procpool: journal " + path +
                                       " is in use by another run (it is locked)");
            }
            throw error("procpool: cannot lock journal " + path + ": " + errno_text(errno));
        }
        journal_header want;
        want.version = format_version;
        want.task_count = task_count;
        want.inputs_hash = inputs_hash;
        want.result_type = demangle(result_mangled);

        bool fresh = true;
        std::uint64_t keep = 0;  // bytes of the existing file to keep
        if (mode != journal_mode::restart) {
            scan_result res = scan(fd_, path);
            journal_contents& c = res.contents;
            if (res.what == scan_result::state::bad_header) {
                throw invalid_argument("procpool: journal " + path + " has a damaged header: " +
                                       restart_hint(path));
            }
            if (res.what == scan_result::state::not_journal) {
                throw invalid_argument("procpool: " + path + " exists and is not a procpool journal: " +
                                       restart_hint(path) + " to overwrite it");
            }
            if (res.what == scan_result::state::ok) {
                const journal_header& h = c.header;
                std::string differs;
                if (h.version != format_version) {
                    differs = "has format version " + std::to_string(h.version) +
                              " (this build writes " + std::to_string(format_version) + ")";
                } else if (h.result_type != want.result_type) {
                    differs = "was written for results of type " + h.result_type +
                              ", this run's are " + want.result_type;
                } else if (h.task_count != task_count) {
                    differs = "was written for " + std::to_string(h.task_count) +
                              " tasks, this run has " + std::to_string(task_count);
                } else if (h.inputs_hash != inputs_hash) {
                    differs = "was written for another input list (inputs hash " +
                              hex(h.inputs_hash) + ", this run's is " + hex(inputs_hash) + ")";
                }
                if (!differs.empty()) {
                    throw invalid_argument("procpool: journal " + path + " " + differs + ": " +
                                           restart_hint(path));
                }
                fresh = false;
                keep = c.valid_bytes;
                records_ = std::move(c.records);
            }
            // no_header: empty, or its run was killed before the header was whole.
        }
        struct stat st {};
        if (::fstat(fd_, &st) != 0) {
            throw error("procpool: cannot read journal " + path + ": " + errno_text(errno));
        }
        if (static_cast<std::uint64_t>(st.st_size) != keep && ::ftruncate(fd_, static_cast<off_t>(keep)) != 0) {
            throw error("procpool: cannot truncate journal " + path + ": " + errno_text(errno));
        }
        size_ = keep;
        if (fresh) {
            want.created_unix_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count();
            std::vector<std::byte> buf(magic.size() + size_field);
            std::memcpy(buf.data(), magic.data(), magic.size());
            wire::writer w(buf);
            wire::save(w, want.version);
            wire::save(w, want.task_count);
            wire::save(w, want.inputs_hash);
            wire::save(w, want.result_type);
            wire::save(w, want.created_unix_ns);
            const std::uint64_t size = buf.size() - magic.size() - size_field;
            std::memcpy(buf.data() + magic.size(), &size, size_field);
            const std::uint64_t check =
                frame_check(std::span<const std::byte>(buf).subspan(magic.size()));
            wire::save(w, check);
            if (const int e = write_all(fd_, buf.data(), buf.size()); e != 0) {
                throw error("procpool: writing journal " + path + " failed: " + errno_text(e));
            }
            size_ = buf.size();
            if (sync_) {
                // The file's new name must reach the disk too, not only its bytes.
                const std::string dir = std::filesystem::path(path).parent_path().string();
                const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (dfd >= 0) {
                    ::fsync(dfd);
                    ::close(dfd);
                }
            }
        }
        if (sync_ && ::fdatasync(fd_) != 0) {
            throw error("procpool: syncing journal " + path + " failed: " + errno_text(errno));
        }
    } catch (...) {
        ::close(fd_);
        throw;
    }
}

journal_file::~journal_file() { ::close(fd_); }

std::vector<std::size_t> journal_file::reusable(std::span<const std::uint64_t> input_hashes,
                                                journal_mode mode) const {
    std::vector<std::size_t> at(input_hashes.size(), no_record);
    for (std::size_t k = 0; k < records_.size(); ++k) {
        const journal_record& r = records_[k];
        if (r.index >= input_hashes.size()) continue;
        const auto i = static_cast<std::size_t>(r.index);
        at[i] = no_record;  // a later record replaces an earlier one, usable or not
        if (r.input_hash != input_hashes[i]) continue;
        if (r.failure) {
            if (mode != journal_mode::resume_keep_failures) continue;
            if (*r.failure == failure_kind::cancelled || *r.failure == failure_kind::shut_down) {
                continue;
            }
        }
        at[i] = k;
    }
    return at;
}

void journal_file::begin_record(std::vector<std::byte>& buf, const journal_record& r) {
    buf.assign(size_field, std::byte{0});
    wire::writer w(buf);
    wire::save(w, r.index);
    wire::save(w, r.input_hash);
    const std::uint8_t status =
        r.failure ? static_cast<std::uint8_t>(static_cast<std::uint8_t>(*r.failure) + 1) : status_ok;
    wire::save(w, status);
    wire::save(w, r.message);
    wire::save(w, r.duration_ns);
    wire::save(w, r.attempts);
}

void journal_file::append(std::vector<std::byte>& buf) {
    const std::uint64_t size = buf.size() - size_field;
    std::memcpy(buf.data(), &size, size_field);
    const std::uint64_t check = frame_check(buf);
    wire::writer w(buf);
    wire::save(w, check);
    if (const int e = write_all(fd_, buf.data(), buf.size()); e != 0) {
        // Leave no partial record for the next append to follow; should this fail too,
        // the next open's scan cuts it off.
        [[maybe_unused]] const int ignored = ::ftruncate(fd_, static_cast<off_t>(size_));
        throw error("procpool: writing journal " + path_ + " failed: " + errno_text(e));
    }
    size_ += buf.size();
    if (sync_ && ::fdatasync(fd_) != 0) {
        throw error("procpool: syncing journal " + path_ + " failed: " + errno_text(errno));
    }
}

}  // namespace detail

}  // namespace procpool
