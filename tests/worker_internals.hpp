// Helpers for tests that run inside a worker process and reach its internals (its shared
// region and descriptors), to forge what a buggy or hostile task could do.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "ipc/ring.hpp"
#include "process/region.hpp"

namespace procpool_test {

/// The worker's shared region: the mapping of its "procpool-worker" memfd.
inline procpool::process::worker_region* my_region() {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line)) {
        if (line.find("memfd:procpool-worker") == std::string::npos) continue;
        return reinterpret_cast<procpool::process::worker_region*>(
            std::stoull(line.substr(0, line.find('-')), nullptr, 16));
    }
    std::abort();
}

/// The worker's descriptor (not stdin, stdout or stderr) whose link target starts with
/// `kind` ("socket:", "pipe:", ...), or -1.
inline int find_fd(const std::string& kind) {
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
        const int fd = std::stoi(e.path().filename().string());
        std::error_code ec;
        const auto target = std::filesystem::read_symlink(e.path(), ec);
        if (fd > 2 && !ec && target.string().rfind(kind, 0) == 0) return fd;
    }
    return -1;
}

}  // namespace procpool_test
