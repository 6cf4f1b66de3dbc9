// procpool::mpi_init: the fork server first, then MPI, the same-binary handshake, and on
// every rank but 0 the serving loop that never returns.
#include <mpi.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mpi/arrays.hpp"
#include "mpi/comm.hpp"
#include "mpi/engine.hpp"
#include "mpi/runtime.hpp"
#include "mpi/server.hpp"
#include "process/fork_server.hpp"
#include "procpool/mpi_pool.hpp"
#include "procpool/process_pool.hpp"
#include "remote/envelope.hpp"

namespace procpool::mpi_impl {

namespace {

/// What each rank tells rank 0 at start-up. Fixed size, for one MPI_Gather.
struct hello {
    char build_id[160];
    char host[96];
    std::int32_t pid;
};

struct state {
    bool mpi = false;  // MPI_Init was called by us
    bool finalized = false;
    int rank = 0;
    int size = 1;
    MPI_Comm world = MPI_COMM_NULL;
    std::unique_ptr<comm> c;
    std::vector<rank_link> servers;
    std::mutex mu;  // engine creation, finalize
    std::shared_ptr<engine> eng;
    bool noticed = false;
};

state& g() {
    static state s;
    return s;
}

// True when a launcher started us as one rank of a job (mpirun, srun, hydra). Without
// one, MPI_Init would make a singleton job (Open MPI starts a helper daemon for it):
// nothing to gain, so MPI is left alone.
bool launched_as_rank() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
        if (std::getenv(v) != nullptr) return true;
    }
    return false;
}

void copy_field(char* dst, std::size_t cap, const std::string& s) {
    std::memset(dst, 0, cap);
    std::memcpy(dst, s.data(), std::min(cap - 1, s.size()));
}

// Worker processes for this rank by default: the cores it may run on, shared with the
// other serving ranks of its node unless the launcher bound each rank to its own cores.
int default_workers(MPI_Comm world, int rank) {
    cpu_set_t set;
    CPU_ZERO(&set);
    int cores = get_nprocs();
    if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
    MPI_Comm node = MPI_COMM_NULL;
    check(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node),
          "MPI_Comm_split_type");
    int node_size = 1;
    MPI_Comm_size(node, &node_size);
    int here0 = rank == 0 ? 1 : 0;
    int rank0_here = 0;
    check(MPI_Allreduce(&here0, &rank0_here, 1, MPI_INT, MPI_MAX, node), "MPI_Allreduce");
    MPI_Comm_free(&node);
    const int servers_here = std::max(1, node_size - rank0_here);
    if (cores < get_nprocs()) return std::max(1, cores);  // bound: these cores are ours
    return std::max(1, cores / servers_here);
}

// Which serving ranks can open rank 0's memory (same node, same process namespace, /proc
// readable): they get shared_array arguments by reference, the others by value. Rank 0
// writes a token in a small memfd; each rank tries to read it through /proc/<pid>/fd.
// PROCPOOL_MPI_COPY_SHARED_ARRAYS=1 (on a rank) makes it take them by value regardless.
void probe_same_node(state& s) {
    struct probe {
        std::int32_t pid = 0;
        std::int32_t fd = -1;
        std::uint64_t token = 0;
    } p;
    int memfd = -1;
    if (s.rank == 0) {
        memfd = memfd_create("procpool-probe", MFD_CLOEXEC);
        timespec ts{};
        clock_gettime(CLOCK_REALTIME, &ts);
        p.token = (static_cast<std::uint64_t>(ts.tv_nsec) << 20) ^ static_cast<std::uint64_t>(ts.tv_sec) ^
                  (static_cast<std::uint64_t>(getpid()) << 44) ^ 0x9e3779b97f4a7c15ULL;
        if (memfd >= 0 &&
            pwrite(memfd, &p.token, sizeof p.token, 0) == static_cast<ssize_t>(sizeof p.token)) {
            p.pid = static_cast<std::int32_t>(getpid());
            p.fd = memfd;
        }
    }
    check(MPI_Bcast(&p, sizeof p, MPI_BYTE, 0, s.world), "MPI_Bcast");
    const char* copy = std::getenv("PROCPOOL_MPI_COPY_SHARED_ARRAYS");
    const bool forced = copy != nullptr && std::strcmp(copy, "0") != 0 && *copy != '\0';
    int can = 0;
    if (s.rank != 0 && p.fd >= 0 && !forced) can = can_open_remote_fd(p.pid, p.fd, p.token) ? 1 : 0;
    std::vector<int> all(s.rank == 0 ? static_cast<std::size_t>(s.size) : 0);
    check(MPI_Gather(&can, 1, MPI_INT, all.data(), 1, MPI_INT, 0, s.world), "MPI_Gather");
    if (memfd >= 0) close(memfd);
    for (auto& r : s.servers) r.same_node = all[static_cast<std::size_t>(r.rank)] != 0;
}

[[noreturn]] void end_rank(int status) {
    state& s = g();
    if (s.world != MPI_COMM_NULL) MPI_Comm_free(&s.world);
    MPI_Finalize();
    s.finalized = true;
    std::fflush(stdout);
    std::fflush(stderr);
    std::exit(status);
}

void at_exit() { procpool::mpi_finalize(); }

}  // namespace

bool runtime::serving() noexcept {
    const state& s = g();
    return s.mpi && s.rank != 0;
}

bool runtime::finalized() {
    state& s = g();
    std::lock_guard lock(s.mu);
    return s.mpi && s.finalized;
}

std::shared_ptr<engine> runtime::engine_or_null() {
    state& s = g();
    std::lock_guard lock(s.mu);
    if (!s.mpi || s.finalized || s.servers.empty()) return nullptr;
    if (!s.eng) s.eng = std::make_shared<engine>(*s.c, s.servers);
    return s.eng;
}

void runtime::notice_local(int workers) {
    state& s = g();
    std::lock_guard lock(s.mu);
    if (s.noticed) return;
    s.noticed = true;
    std::fprintf(stderr,
                 "procpool: mpi_pool: %s; running tasks on a local process pool of %d workers\n",
                 s.mpi ? "this MPI job has no other rank" : "not started by mpirun or srun",
                 workers);
}

}  // namespace procpool::mpi_impl

namespace procpool {

using mpi_impl::g;

void mpi_init(int argc, char** argv) {
    mpi_impl::state& s = g();
    int already = 0;
    if (!s.mpi && MPI_Initialized(&already) == MPI_SUCCESS && already != 0) {
        // The program called MPI_Init itself: the fork server would start from an MPI
        // process, and MPI_Init_thread below would be a second initialisation.
        std::fprintf(stderr,
                     "procpool: mpi_init: MPI is already initialised (the program called "
                     "MPI_Init); call procpool::mpi_init instead of MPI_Init, first thing in "
                     "main: it starts procpool's fork server before MPI exists, then "
                     "initialises MPI itself\n");
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    // Workers come from the fork server, started before MPI exists in this process:
    // forking an MPI process is unsafe with several of its transports. They are no MPI
    // ranks: the launcher's variables are kept from them, so that an MPI program a task
    // starts (or an MPI library it loads) does not take itself for this rank.
    process::drop_env_in_workers({"OMPI_", "PMIX_", "PMI_", "OPAL_", "PRTE_", "HYDRA_",
                                  "MPI_LOCALRANKID", "MPI_LOCALNRANKS"});
    init(argc, argv);
    if (s.mpi || !mpi_impl::launched_as_rank()) return;
    int provided = 0;
    mpi_impl::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided),
                    "MPI_Init_thread");
    s.mpi = true;
    if (provided < MPI_THREAD_SERIALIZED) {
        std::fprintf(stderr,
                     "procpool: this MPI library does not support MPI_THREAD_SERIALIZED (it gave "
                     "level %d); procpool's MPI traffic runs on its own thread\n",
                     provided);
        mpi_impl::end_rank(2);
    }
    mpi_impl::check(MPI_Comm_dup(MPI_COMM_WORLD, &s.world), "MPI_Comm_dup");
    MPI_Comm_rank(s.world, &s.rank);
    MPI_Comm_size(s.world, &s.size);

    // Same binary everywhere: task functions travel as code offsets.
    mpi_impl::hello mine{};
    mpi_impl::copy_field(mine.build_id, sizeof mine.build_id, remote::program_build_id());
    mpi_impl::copy_field(mine.host, sizeof mine.host, mpi_impl::host_name());
    mine.pid = static_cast<std::int32_t>(getpid());
    std::vector<mpi_impl::hello> all(s.rank == 0 ? static_cast<std::size_t>(s.size) : 0);
    mpi_impl::check(MPI_Gather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, 0,
                               s.world),
                    "MPI_Gather");
    int ok = 1;
    if (s.rank == 0) {
        std::string bad;
        for (int r = 1; r < s.size; ++r) {
            const auto& h = all[static_cast<std::size_t>(r)];
            if (std::strncmp(h.build_id, mine.build_id, sizeof mine.build_id) != 0) {
                bad += "\n  rank " + std::to_string(r) + " on host " + h.host + ": build id " +
                       h.build_id;
            }
        }
        if (!bad.empty()) {
            ok = 0;
            std::fprintf(stderr,
                         "procpool: the ranks of this MPI job run different programs; rank 0 on "
                         "host %s has build id %s, but:%s\nLaunch the same executable on every "
                         "rank (a task's function is found by its place in the binary).\n",
                         mine.host, mine.build_id, bad.c_str());
        }
        for (int r = 1; r < s.size; ++r) {
            mpi_impl::rank_link link;
            link.rank = r;
            link.host = all[static_cast<std::size_t>(r)].host;
            link.pid = all[static_cast<std::size_t>(r)].pid;
            s.servers.push_back(std::move(link));
        }
    }
    mpi_impl::check(MPI_Bcast(&ok, 1, MPI_INT, 0, s.world), "MPI_Bcast");
    if (ok == 0) mpi_impl::end_rank(2);
    mpi_impl::probe_same_node(s);

    const int workers = mpi_impl::default_workers(s.world, s.rank);
    if (s.rank != 0) {
        {
            mpi_impl::comm c(s.world);
            try {
                mpi_impl::serve_rank(c, workers);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "procpool: MPI rank %d stopped serving: %s\n", s.rank,
                             e.what());
                MPI_Abort(MPI_COMM_WORLD, 3);
            }
        }
        mpi_impl::end_rank(0);
    }
    s.c = std::make_unique<mpi_impl::comm>(s.world);
    std::atexit(mpi_impl::at_exit);
}

void mpi_finalize() {
    mpi_impl::state& s = g();
    std::shared_ptr<mpi_impl::engine> eng;
    {
        std::lock_guard lock(s.mu);
        if (!s.mpi || s.finalized) return;
        s.finalized = true;
        eng = std::move(s.eng);
    }
    if (eng) {
        // Tells every serving rank to exit. A pool still alive (misuse, or one that
        // outlives main) keeps the stopped engine, which refuses its work from now on.
        eng->stop();
    } else if (s.rank == 0) {
        for (const auto& r : s.servers) s.c->send(r.rank, mpi_impl::tag_stop, {});
        s.c->flush();
    }
    eng.reset();
    s.c.reset();
    if (s.world != MPI_COMM_NULL) MPI_Comm_free(&s.world);
    MPI_Finalize();
}

int mpi_rank() noexcept { return g().rank; }

int mpi_size() noexcept { return g().size; }

}  // namespace procpool
