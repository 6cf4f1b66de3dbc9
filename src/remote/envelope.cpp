// The envelope's encoding, the start-up handshake, and the reports of failed start-ups.
#include "remote/envelope.hpp"

#include <elf.h>
#include <link.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>

#include "procpool/wire.hpp"

namespace procpool::remote {

std::vector<std::byte> encode_config(const worker_config& c) {
    std::vector<std::byte> out;
    wire::writer w(out);
    wire::save_all(w, c.build_id, c.anchor, c.ring_capacity, c.max_tasks, c.memory_limit,
                   c.shared_threshold, c.env, c.init_invoker, c.init_fn, c.init_args,
                   c.output_limit);
    return out;
}

worker_config decode_config(const std::byte* p, std::size_t n) {
    wire::reader r(p, n);
    worker_config c;
    std::tie(c.build_id, c.anchor, c.ring_capacity, c.max_tasks, c.memory_limit, c.shared_threshold,
             c.env, c.init_invoker, c.init_fn, c.init_args, c.output_limit) =
        wire::load_all<std::string, std::uint64_t, std::uint32_t, std::int32_t, std::uint64_t,
                       std::uint64_t, std::vector<std::pair<std::string, std::string>>,
                       std::uint64_t, std::uint64_t, std::vector<std::byte>, std::uint64_t>(r);
    return c;
}

namespace {

// The NT_GNU_BUILD_ID note of the main program (the first object dl_iterate_phdr
// reports), in hex; empty if it has none.
std::string gnu_build_id() {
    std::string hex;
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* out) -> int {
            auto& id = *static_cast<std::string*>(out);
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const ElfW(Phdr)& ph = info->dlpi_phdr[i];
                if (ph.p_type != PT_NOTE) continue;
                const auto* p =
                    reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
                const unsigned char* end = p + ph.p_memsz;
                while (p + sizeof(ElfW(Nhdr)) <= end) {
                    ElfW(Nhdr) nh;
                    std::memcpy(&nh, p, sizeof nh);
                    const unsigned char* name = p + sizeof nh;
                    const unsigned char* desc = name + ((nh.n_namesz + 3) & ~3u);
                    const unsigned char* next = desc + ((nh.n_descsz + 3) & ~3u);
                    if (next > end) break;
                    if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
                        std::memcmp(name, "GNU", 4) == 0) {
                        static const char digits[] = "0123456789abcdef";
                        for (std::uint32_t k = 0; k < nh.n_descsz; ++k) {
                            id += digits[desc[k] >> 4];
                            id += digits[desc[k] & 15];
                        }
                        return 1;
                    }
                    p = next;
                }
            }
            return 1;  // only the main program counts
        },
        &hex);
    return hex;
}

}  // namespace

const std::string& program_build_id() {
    static const std::string id = [] {
        std::string gnu = gnu_build_id();
        if (!gnu.empty()) return "gnu:" + gnu;
        struct stat st {};
        if (stat("/proc/self/exe", &st) != 0) return std::string("unknown");
        return "file:" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" +
               std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
               std::to_string(st.st_mtim.tv_nsec);
    }();
    return id;
}

bool same_binary(const worker_config& cfg) noexcept {
    try {
        return cfg.anchor == reinterpret_cast<std::uintptr_t>(&detail::code_anchor) &&
               cfg.build_id == program_build_id();
    } catch (...) {
        return false;
    }
}

std::string describe_startup(const startup_report& r) {
    std::string what;
    switch (static_cast<startup_step>(r.step)) {
        case startup_step::parent_gone:
            what = "its parent process exited first";
            break;
        case startup_step::wrong_binary:
            what = "it runs a different build of the program than the pool (build id " +
                   program_build_id() + ")";
            break;
        case startup_step::map_region:
            what = "mapping its shared region failed";
            break;
        case startup_step::bad_region:
            what = "its shared region was not set up";
            break;
        case startup_step::bad_config:
            what = "its configuration could not be decoded";
            break;
        case startup_step::memory_limit:
            what = "setting its memory limit (RLIMIT_AS) failed";
            break;
        default:
            what = "unknown start-up step " + std::to_string(r.step);
    }
    if (r.err != 0) what += std::string(": ") + std::strerror(r.err);
    return what;
}

}  // namespace procpool::remote
