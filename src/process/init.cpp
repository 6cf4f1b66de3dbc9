// procpool::init, the program's one start-up call for process pools, and the defaults
// every process pool shares.
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "process/fork_server.hpp"
#include "procpool/process_pool.hpp"

namespace procpool {

void init(int /*argc*/, char** /*argv*/) {
    if (process::fork_server_running()) return;
    if (process::current_thread_count() > 1) {
        std::fprintf(stderr,
                     "procpool: init() called while the program already runs other threads; "
                     "call it first thing in main() so workers start from a clean state\n");
    }
    process::start_fork_server();
}

bool initialized() noexcept {
    return process::fork_server_running();
}

std::vector<std::pair<std::string, std::string>> default_worker_env() {
    return {{"OMP_NUM_THREADS", "1"}, {"OPENBLAS_NUM_THREADS", "1"}, {"MKL_NUM_THREADS", "1"}};
}

}  // namespace procpool
