// Rank 0's side of every mpi_pool: one thread that owns all MPI traffic, queues tasks per
// pool, keeps each serving rank's window of tasks full and resolves outcomes.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mpi/comm.hpp"
#include "mpi/messages.hpp"
#include "procpool/mpi_pool.hpp"
#include "procpool/future.hpp"

namespace procpool::mpi_impl {

/// What the engine needs from a pool: the hand-back of a task it has resolved (or that
/// was resolved before it), dropping the pool's reference.
class pool_ref {
  public:
    virtual void release_task(detail::mpi_task_base& t) noexcept = 0;

  protected:
    ~pool_ref() = default;
};

/// A serving rank as rank 0 knows it from the start-up handshake.
struct rank_link {
    int rank = 0;
    std::string host;
    int pid = 0;  ///< its process id on `host` (used only where same_node)
    bool lost = false;  ///< an MPI error involved it: no more tasks go there
    double rate = 0;             ///< replies per ns, moving average (adaptive windows)
    std::int64_t last_reply_ns = 0;
    /// It stopped answering (see engine::check_liveness): its tasks were failed and no new
    /// ones go there until it answers again. Unlike `lost`, control messages still go.
    bool silent = false;
    std::int64_t last_heard_ns = 0;  ///< when any message from it last arrived
    std::int64_t ping_sent_ns = 0;   ///< when the unanswered ping went; 0: none
    int held = 0;                    ///< tasks sent to it and not resolved, all pools
    /// It opened rank 0's memory at start-up: shared arrays go to it by reference.
    bool same_node = false;
    /// Bytes of shared arrays sent to it by value whose tasks have not resolved.
    std::size_t copied_in_flight = 0;
};

class engine {
  public:
    /// Starts the thread; `servers` are ranks 1..size-1.
    engine(comm& c, std::vector<rank_link> servers);
    ~engine();
    engine(const engine&) = delete;
    engine& operator=(const engine&) = delete;

    /// Opens a pool on every serving rank; returns where it runs once all are ready.
    /// Throws procpool::error naming the ranks that could not start it.
    std::vector<mpi_rank_info> open_pool(open_msg m, int in_flight_per_worker);
    /// Closes a pool whose tasks have all been resolved.
    void close_pool(std::uint32_t pool);
    /// Cancels every task of `pool` that has not started: those still on rank 0, and those
    /// sent ahead to a rank (it cancels them in its local pool). Returns once every rank
    /// has done so, or at once when called on the engine's thread (a done-callback).
    void cancel_pending(std::uint32_t pool);

    /// Queues `t` (its id, args and pool set; the pool holds a reference). False once
    /// stop() was called (mpi_finalize): `t` is not taken, the caller resolves it.
    bool submit(detail::mpi_task_base& t, std::uint32_t pool);
    /// Asks the task's rank to stop it (its future is already resolved as cancelled).
    void cancel(std::uint64_t id);
    /// Cancels the task only if it has not started: dropped if still on rank 0 (resolved
    /// as cancelled here), skipped by its rank if not started there; otherwise it runs.
    void cancel_if_pending(std::uint64_t id);
    /// True once stop() was called: work posted from now on is refused (submit) or
    /// dropped (cancel, close: there is no rank left to tell).
    bool stopped() const;

    /// A fresh id for a task.
    std::uint64_t next_id() noexcept;
    /// A fresh id for a pool. Pools count apart from tasks: a pool id is 32 bits on the
    /// wire, and one taken from the task counter would repeat after 2^32 tasks, so a new
    /// pool could take the id of one still open (on the ranks, replacing it).
    std::uint32_t next_pool_id() noexcept;

    /// Tells every serving rank to exit and stops the thread (all pools closed).
    void stop();

  private:
    struct pool_state {
        std::uint32_t id = 0;
        int per_worker = 0;         ///< 0: adaptive (see window())
        std::vector<int> workers;   ///< per server index: the pool's workers there
        std::vector<int> inflight;  ///< per server index
        std::deque<detail::mpi_task_base*> pending;
        /// Since when no rank can take its tasks (all silent or lost); 0: one can.
        std::int64_t no_rank_since = 0;
    };
    struct open_request {
        open_msg msg;
        int per_worker = 0;
        std::shared_ptr<promise<std::vector<mpi_rank_info>>> done;
        std::vector<mpi_rank_info> infos;
        std::string errors;
        std::vector<int> waiting;  ///< the ranks yet to answer
    };
    struct cancel_request {
        std::uint32_t pool = 0;
        std::shared_ptr<promise<void>> done;  ///< null: nobody waits
        std::vector<int> waiting;             ///< the ranks yet to confirm
    };
    struct inbox {
        std::vector<std::pair<detail::mpi_task_base*, std::uint32_t>> tasks;
        std::vector<std::uint64_t> cancels;
        std::vector<std::uint64_t> cancels_pending;
        std::vector<cancel_request> cancel_pools;
        std::vector<std::uint32_t> closes;
        std::vector<open_request> opens;
        bool stop = false;
        bool empty() const noexcept {
            return tasks.empty() && cancels.empty() && cancels_pending.empty() && cancel_pools.empty() && closes.empty() &&
                   opens.empty() && !stop;
        }
    };

    void loop();
    bool take_inbox();
    void dispatch(pool_state& p);
    int window(const pool_state& p, std::size_t server) const noexcept;
    void on_message(const message& m);
    void on_reply(const message& m);
    void on_opened(const message& m);
    void on_pending_cancelled(const message& m);
    void lose_rank(std::size_t server, const std::string& why);
    void heard_from(int rank, std::int64_t now) noexcept;
    void check_liveness(std::int64_t now);
    void declare_silent(std::size_t server, std::int64_t now);
    void fail_unservable(pool_state& p, std::int64_t now);
    void finish_open(std::unordered_map<std::uint32_t, open_request>::iterator it);
    void stop_ranks();
    /// Takes `t` out of the tasks in flight (its pool's and its rank's counts).
    void forget_inflight(detail::mpi_task_base& t) noexcept;
    void fail_task(detail::mpi_task_base& t, std::exception_ptr e) noexcept;
    std::string where(int rank) const;
    std::size_t server_index(int rank) const noexcept { return static_cast<std::size_t>(rank - 1); }
    bool post(inbox& add);
    void fail_pending(const char* why) noexcept;
    void drop_queued(std::unordered_set<std::uint64_t>& ids, bool resolve) noexcept;

    comm& c_;
    std::vector<rank_link> servers_;
    std::atomic<std::uint64_t> ids_{0};
    std::atomic<std::uint32_t> pool_ids_{0};

    // Shared with submitting threads.
    mutable std::mutex mu_;
    std::condition_variable cv_;
    inbox in_;
    bool sleeping_ = false;
    bool accepting_ = true;  ///< false from stop() on

    // The engine thread's own.
    inbox work_;
    std::unordered_map<std::uint32_t, pool_state> pools_;
    struct sent_task {
        detail::mpi_task_base* task = nullptr;
        std::int64_t sent_ns = 0;  ///< when it left for its rank (steady clock)
        std::size_t copied = 0;    ///< bytes of shared arrays it carried by value
    };
    std::unordered_map<std::uint64_t, sent_task> inflight_;
    /// Shared blocks of tasks failed because their rank was silent, kept until the rank
    /// answers for them (by reference it may still open them through /proc).
    std::unordered_map<std::uint64_t, std::vector<detail::shm_ref>> orphaned_blocks_;
    std::int64_t next_check_ns_ = 0;  ///< check_liveness's next round
    std::unordered_map<std::uint32_t, open_request> opening_;
    std::vector<cancel_request> cancelling_;  // waiting for the ranks' confirmations
    bool stopping_ = false;
    std::vector<std::vector<std::byte>> batches_;  // per server, reused by dispatch
    std::thread thread_;
    std::thread::id thread_id_;  // thread_'s, kept: join() in stop() clears thread_'s
};

/// The what() of the exception in `e`.
std::string error_text(const std::exception_ptr& e);

/// Resolves `t` from a serving rank's reply (or does nothing if it was resolved first).
void resolve_from_reply(detail::mpi_task_base& t, const reply_msg& h, const std::byte* body,
                        std::size_t n, const std::string& where, bool claimed = false) noexcept;

}  // namespace procpool::mpi_impl
