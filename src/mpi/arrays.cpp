#include "mpi/arrays.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "procpool/error.hpp"

namespace procpool::mpi_impl {

namespace {

constexpr std::size_t page = 4096;

template <class H>
void put(std::vector<std::byte>& out, const H& h) {
    const auto* p = reinterpret_cast<const std::byte*>(&h);
    out.insert(out.end(), p, p + sizeof h);
}

template <class H>
H take(const std::byte* p, std::size_t n, std::size_t& at) {
    if (n - at < sizeof(H)) {
        throw serialization_error("mpi_pool: a task message's shared-array section is cut short");
    }
    H h;
    std::memcpy(&h, p + at, sizeof h);
    at += sizeof h;
    return h;
}

// The bytes of a block of rank 0. A read-only twin has no mapping in this process: it is
// mapped for the copy and unmapped again.
void append_bytes(std::vector<std::byte>& out, const detail::shm_block& b) {
    const std::size_t n = b.bytes();
    if (n == 0) return;
    const auto* src = static_cast<const std::byte*>(b.data());
    void* temp = nullptr;
    if (src == nullptr) {
        temp = mmap(nullptr, n, PROT_READ, MAP_SHARED, b.fd(), 0);
        if (temp == MAP_FAILED) {
            throw error("mpi_pool: cannot map a shared array to send it to another node: " +
                        std::string(std::strerror(errno)));
        }
        src = static_cast<const std::byte*>(temp);
    }
    out.insert(out.end(), src, src + n);
    if (temp != nullptr) munmap(temp, n);
}

// Calls f(j, k) for each run [j, k) of bytes where `c` and `o` differ, in [0, len).
template <class F>
void for_each_run(const std::byte* c, const std::byte* o, std::size_t len, F&& f) {
    for (std::size_t j = 0; j < len;) {
        if (c[j] == o[j]) {
            ++j;
            continue;
        }
        std::size_t k = j;
        while (k < len && c[k] != o[k]) ++k;
        f(j, k);
        j = k;
    }
}

}  // namespace

void append_arrays(std::vector<std::byte>& out, const std::vector<detail::shm_ref>& blocks,
                   bool same_node, std::size_t limit) {
    for (const auto& b : blocks) {
        array_header h;
        h.id = b->id();
        h.bytes = b->bytes();
        h.writable = b->writable() ? 1 : 0;
        h.by_value = same_node ? 0 : 1;
        h.pid = static_cast<std::int32_t>(getpid());
        h.fd = b->fd();
        if (same_node) {
            struct stat st {};
            if (fstat(b->fd(), &st) != 0) {
                throw error("mpi_pool: cannot stat a shared array's descriptor: " +
                            std::string(std::strerror(errno)));
            }
            h.dev = static_cast<std::uint64_t>(st.st_dev);
            h.ino = static_cast<std::uint64_t>(st.st_ino);
        }
        if (!same_node && out.size() + sizeof h + b->bytes() > limit) {
            throw serialization_error(
                "mpi_pool: the task's shared arrays take more than one MPI message carries "
                "(2 GiB) to a rank on another node, where they travel by value; split the "
                "data, or share it through a file every node can read");
        }
        put(out, h);
        if (!same_node) append_bytes(out, *b);
    }
}

std::size_t read_arrays(const std::byte* p, std::size_t n, std::uint32_t count,
                        linked_blocks& linked, received_arrays& out) {
    std::size_t at = 0;
    if (linked.size() > 256) std::erase_if(linked, [](const auto& e) { return e.second.expired(); });
    for (std::uint32_t i = 0; i < count; ++i) {
        const auto h = take<array_header>(p, n, at);
        const bool writable = h.writable != 0;
        const auto bytes = static_cast<std::size_t>(h.bytes);
        if (h.by_value != 0) {
            if (n - at < h.bytes) {
                throw serialization_error("mpi_pool: a shared array's bytes are cut short");
            }
            auto b = detail::shm_block::relayed(-1, bytes, writable, h.id, true);
            if (bytes != 0) {
                detail::populate_pages(b->data(), bytes, true);
                std::memcpy(b->data(), p + at, bytes);
            }
            out.sent.emplace_back();
            if (writable) out.sent.back().assign(p + at, p + at + bytes);
            at += bytes;
            out.blocks.push_back(std::move(b));
            continue;
        }
        detail::shm_ref b;
        if (auto it = linked.find(h.id); it != linked.end()) b = it->second.lock();
        if (!b || b->bytes() != bytes || b->writable() != writable) {
            const std::string path =
                "/proc/" + std::to_string(h.pid) + "/fd/" + std::to_string(h.fd);
            const int fd = ::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
            if (fd < 0) {
                throw error("mpi_pool: cannot open rank 0's shared array (" + path +
                            "): " + std::strerror(errno) +
                            "; set PROCPOOL_MPI_COPY_SHARED_ARRAYS=1 to send them by value");
            }
            struct stat st {};
            if (fstat(fd, &st) != 0 || static_cast<std::uint64_t>(st.st_dev) != h.dev ||
                static_cast<std::uint64_t>(st.st_ino) != h.ino) {
                ::close(fd);
                throw error("mpi_pool: rank 0's shared array is gone (" + path +
                            " names another file now)");
            }
            b = detail::shm_block::relayed(fd, bytes, writable, h.id, false);
            linked[h.id] = b;
        }
        out.sent.emplace_back();
        out.blocks.push_back(std::move(b));
    }
    return at;
}

std::uint32_t append_changes(std::vector<std::byte>& out, const received_arrays& a) {
    std::uint32_t records = 0;
    for (std::size_t i = 0; i < a.blocks.size(); ++i) {
        const std::vector<std::byte>& old = a.sent[i];
        if (old.empty()) continue;
        const auto* cur = static_cast<const std::byte*>(a.blocks[i]->data());
        const auto block = static_cast<std::uint32_t>(i);
        const std::size_t n = old.size();
        // A page at a time: equal pages are skipped; in a changed one only the differing
        // bytes go back (so two tasks writing disjoint parts of one page do not undo each
        // other), as runs, or as a bit mask when the runs would take more room.
        for (std::size_t from = 0; from < n; from += page) {
            const std::size_t len = std::min(page, n - from);
            const std::byte* c = cur + from;
            const std::byte* o = old.data() + from;
            if (std::memcmp(c, o, len) == 0) continue;
            std::size_t runs = 0, changed = 0;
            for_each_run(c, o, len, [&](std::size_t j, std::size_t k) {
                ++runs;
                changed += k - j;
            });
            const std::size_t mask_bytes = (len + 7) / 8;
            if (runs * sizeof(change_header) + changed > sizeof(change_header) + mask_bytes + len) {
                put(out, change_header{block, 1, from, len});
                const std::size_t at = out.size();
                out.resize(at + mask_bytes);
                for (std::size_t j = 0; j < len; ++j) {
                    if (c[j] != o[j]) {
                        out[at + j / 8] |= static_cast<std::byte>(1u << (j % 8));
                    }
                }
                out.insert(out.end(), c, c + len);
                ++records;
                continue;
            }
            for_each_run(c, o, len, [&](std::size_t j, std::size_t k) {
                put(out, change_header{block, 0, from + j, k - j});
                out.insert(out.end(), c + j, c + k);
                ++records;
            });
        }
    }
    return records;
}

std::size_t apply_changes(const std::byte* p, std::size_t n, std::uint32_t count,
                          const std::vector<detail::shm_ref>& blocks) {
    std::size_t at = 0;
    for (std::uint32_t i = 0; i < count; ++i) {
        const auto h = take<change_header>(p, n, at);
        const std::uint64_t mask = h.masked != 0 ? (h.len + 7) / 8 : 0;
        if (h.block >= blocks.size() || h.len > n || n - at < h.len + mask) {
            throw serialization_error("mpi_pool: a reply's shared-array changes are malformed");
        }
        const detail::shm_block& b = *blocks[h.block];
        if (b.data() == nullptr || !b.writable() || h.offset > b.bytes() ||
            h.len > b.bytes() - h.offset) {
            throw serialization_error("mpi_pool: a reply changes a shared array out of its bounds");
        }
        auto* dst = static_cast<std::byte*>(b.data()) + h.offset;
        const auto len = static_cast<std::size_t>(h.len);
        if (h.masked == 0) {
            std::memcpy(dst, p + at, len);
        } else {
            const std::byte* bits = p + at;
            const std::byte* src = bits + mask;
            for (std::size_t j = 0; j < len; ++j) {
                if ((std::to_integer<unsigned>(bits[j / 8]) >> (j % 8) & 1u) != 0) dst[j] = src[j];
            }
        }
        at += static_cast<std::size_t>(mask) + len;
    }
    return at;
}

bool can_open_remote_fd(pid_t pid, int fd, std::uint64_t token) noexcept {
    const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
    const int f = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f < 0) return false;
    std::uint64_t got = 0;
    const bool ok = pread(f, &got, sizeof got, 0) == static_cast<ssize_t>(sizeof got) && got == token;
    close(f);
    return ok;
}

}  // namespace procpool::mpi_impl
