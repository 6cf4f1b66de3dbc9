// Both ends of the control socket's traffic: shared blocks and out-of-band payloads.
#include "process/channel.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ipc/fd.hpp"
#include "procpool/error.hpp"

namespace procpool::process {

bool send_attachments(int sock, const std::vector<detail::shm_ref>& blocks,
                      bool nonblocking) noexcept {
    for (const auto& b : blocks) {
        const attach_msg m{b->id(), b->bytes(), b->writable() ? 1u : 0u,
                           (b->returnable() ? attach_returnable : 0u) |
                               (b->progressive() ? attach_progressive : 0u)};
        const int fd = b->fd();
        if (!ipc::send_with_fds(sock, &m, sizeof m, std::span<const int>(&fd, 1), nonblocking)) {
            return false;
        }
    }
    return true;
}

namespace {
bool is_memfd(int fd) {
    char link[64];
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = readlink(path.c_str(), link, sizeof link - 1);
    return n > 7 && std::memcmp(link, "/memfd:", 7) == 0;
}
}  // namespace

void check_mappable(int fd, std::uint64_t bytes, bool require_memfd) {
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        throw protocol_violation("a descriptor that is not a regular file or memfd");
    }
    if (static_cast<std::uint64_t>(st.st_size) < bytes) {
        throw protocol_violation("a block of " + std::to_string(st.st_size) +
                                 " bytes announced as " + std::to_string(bytes));
    }
    // A memfd can be shrunk by whoever holds it unless sealed; a mapped byte past its end
    // would then kill this process with SIGBUS. A file on disk cannot be sealed at all.
    const bool memfd = is_memfd(fd);
    if (require_memfd && !memfd) throw protocol_violation("a block that is not a memfd");
    if (memfd && (fcntl(fd, F_GET_SEALS) & F_SEAL_SHRINK) == 0) {
        throw protocol_violation("a shared block that is not sealed against shrinking");
    }
}

namespace {

// Makes room in `kept` for a mapping of `bytes` (see receive_attachments).
void make_room(detail::shm_table& kept, std::uint64_t bytes) {
    constexpr std::size_t max_kept = 4;
    // The worker's own bound (shm_block::returned_by_reader): 256 MiB and a page a block.
    constexpr std::uint64_t max_kept_bytes = (std::uint64_t{256} << 20) + max_kept * 4096;
    std::uint64_t total = bytes;
    for (const auto& [id, b] : kept) total += b->bytes();
    while (!kept.empty() && (kept.size() >= max_kept || total > max_kept_bytes)) {
        total -= kept.begin()->second->bytes();
        kept.erase(kept.begin());
    }
}

}  // namespace

void receive_attachments(int sock, std::uint32_t n, detail::shm_table& table, bool from_worker,
                         detail::shm_table* kept) {
    if (from_worker && n > max_attachments) {
        throw protocol_violation("a result announcing " + std::to_string(n) + " shared blocks");
    }
    // Every record is taken off the socket before any is judged, so that a refused one
    // leaves the channel in step for the next message.
    std::vector<std::pair<attach_msg, ipc::unique_fd>> got;
    // In a worker: a block whose descriptor did not arrive, the first mapping refused.
    bool lost = false;
    std::exception_ptr refused;
    for (std::uint32_t i = 0; i < n; ++i) {
        attach_msg m{};
        int fd = -1;
        std::size_t nfds = 0;
        const long len =
            ipc::recv_with_fds(sock, &m, sizeof m, std::span<int>(&fd, 1), nfds, from_worker);
        ipc::unique_fd owned(nfds == 1 ? fd : -1);
        if (len != static_cast<long>(sizeof m) || nfds != 1) {
            if (from_worker) throw protocol_violation("a shared block's descriptor was missing");
            if (len != static_cast<long>(sizeof m)) {
                throw serialization_error("a shared array's record did not arrive");
            }
            // Out of descriptors (the kernel drops them): a mapping this worker kept under
            // the id is not the block sent now, so it goes, and the task that needs it
            // fails ("not received") rather than read memory the parent has freed.
            table.erase(m.id);
            lost = true;
            continue;
        }
        got.emplace_back(m, std::move(owned));
    }
    if (!from_worker) {
        for (auto& [m, fd] : got) {
            try {
                table[m.id] =
                    detail::shm_block::adopt(fd.release(), m.bytes, m.writable != 0, false);
                if ((m.flags & attach_progressive) != 0) table[m.id]->mark_progressive();
            } catch (...) {  // e.g. out of address space: as above
                table.erase(m.id);
                if (!refused) refused = std::current_exception();
            }
        }
        if (refused) std::rethrow_exception(refused);
        if (lost) throw serialization_error("a shared array's descriptor did not arrive");
        return;
    }
    for (auto& [m, fd] : got) {  // in the parent: a worker's result blocks
        const bool returnable = (m.flags & attach_returnable) != 0;
        if (returnable && kept != nullptr) {
            auto it = kept->find(m.id);
            if (it != kept->end() && it->second->bytes() == m.bytes) {
                it->second->mark_returned_on_free();
                table[m.id] = it->second;
                continue;  // `fd` is closed: the mapping kept is the same memory
            }
            if (it != kept->end()) kept->erase(it);
        }
        if (!is_memfd(fd.get())) {
            throw serialization_error(
                "a task returned a file-backed array (mapped_file_array): the task could "
                "truncate the file under the parent's mapping. Return the file's path and "
                "open it in the parent instead");
        }
        check_mappable(fd.get(), m.bytes, true);
        detail::shm_ref b = detail::shm_block::adopt(fd.release(), m.bytes, m.writable != 0, true);
        if (returnable) {
            b->mark_returned_on_free();
            if (kept != nullptr && b->returnable_mapping() && b->data() != nullptr) {
                make_room(*kept, m.bytes);
                b->close_descriptor();  // the mapping is what is kept: no descriptor held
                (*kept)[m.id] = b;
            }
        }
        table[m.id] = std::move(b);
    }
}

bool send_payload(int sock, char tag, const std::byte* p, std::size_t n, bool seal,
                  bool nonblocking) noexcept {
    const char* name = tag == 'R' ? "procpool-result" : "procpool-args";
    ipc::unique_fd fd(memfd_create(name, MFD_CLOEXEC | (seal ? MFD_ALLOW_SEALING : 0u)));
    if (!fd || ftruncate(fd.get(), static_cast<off_t>(n)) != 0) return false;
    std::size_t off = 0;
    while (off < n) {
        const ssize_t k = pwrite(fd.get(), p + off, n - off, static_cast<off_t>(off));
        if (k <= 0) return false;
        off += static_cast<std::size_t>(k);
    }
    if (seal && fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        return false;
    }
    const int f = fd.get();
    return ipc::send_with_fds(sock, &tag, 1, std::span<const int>(&f, 1), nonblocking);
}

mapped_payload::~mapped_payload() {
    reset();
}

void mapped_payload::reset() noexcept {
    if (size_ != 0) munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
}

void receive_payload(int sock, char tag, std::uint64_t size, bool from_worker,
                     mapped_payload& out) {
    out.reset();
    int fd = -1;
    std::size_t nfds = 0;
    char got = 0;
    if (ipc::recv_with_fds(sock, &got, 1, std::span<int>(&fd, 1), nfds, from_worker) != 1 ||
        nfds != 1 || got != tag) {
        if (nfds == 1) ::close(fd);
        throw protocol_violation("a large payload's descriptor was missing");
    }
    ipc::unique_fd owned(fd);
    if (from_worker) check_mappable(fd, size, true);
    if (size == 0) return;
    void* q = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (q == MAP_FAILED) {
        throw protocol_violation("a large payload of " + std::to_string(size) +
                                 " bytes could not be mapped");
    }
    out.data_ = static_cast<const std::byte*>(q);
    out.size_ = static_cast<std::size_t>(size);
}

void discard_payload(int sock) noexcept {
    int fd = -1;
    std::size_t nfds = 0;
    char tag = 0;
    if (ipc::recv_with_fds(sock, &tag, 1, std::span<int>(&fd, 1), nfds) > 0 && nfds == 1) {
        ::close(fd);
    }
}

}  // namespace procpool::process
