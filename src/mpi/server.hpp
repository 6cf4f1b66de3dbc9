// A serving rank: opens local process pools as rank 0 asks, runs rank 0's tasks in them
// and sends back each outcome. Its loop never returns into the user's program.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mpi/arrays.hpp"
#include "mpi/comm.hpp"
#include "mpi/messages.hpp"
#include "procpool/detail/remote_task.hpp"
#include "procpool/future.hpp"
#include "procpool/process_pool.hpp"

namespace procpool::mpi_impl {

/// The serving rank's state. handle() runs on the rank's main thread; outcomes arrive
/// on the local pools' threads and wait in an outbox until the main thread sends them.
class rank_server {
  public:
    explicit rank_server(int default_workers) : default_workers_(default_workers) {}
    rank_server(const rank_server&) = delete;
    rank_server& operator=(const rank_server&) = delete;
    ~rank_server();

    /// Handles one message from rank 0. False once told to stop.
    bool handle(const message& m);

    /// Moves the replies waiting to be sent into `out` (tag, body pairs); true if any.
    bool take_outbox(std::vector<std::pair<int, std::vector<std::byte>>>& out);

    /// True while a task of this rank has not replied yet.
    bool busy() const;

    /// Closes every pool (waits for their tasks).
    void close_all() noexcept;

  private:
    void open(const open_msg& m);
    void run(const task_msg& h, const std::byte* args, std::size_t n);
    void cancel(std::uint64_t id, bool stop_running);
    void cancel_pending(std::uint32_t pool);
    void close(std::uint32_t pool) noexcept;
    void reply(std::uint64_t id, const future<detail::raw_reply>& f,
               const received_arrays* arrays);
    void reply_error(std::uint64_t id, outcome_kind kind, const std::string& text);
    void post(int tag, std::vector<std::byte> body);
    void post_reply(reply_msg h, const std::byte* body, std::size_t n,
                    const received_arrays* arrays = nullptr);

    int default_workers_;
    std::string host_ = host_name();
    std::unordered_map<std::uint32_t, std::unique_ptr<process_pool>> pools_;
    std::unordered_set<std::uint32_t> cancelled_;  // pools shut down with cancel_pending
    linked_blocks linked_;  // rank 0's blocks opened by reference (main thread only)

    mutable std::mutex mu_;
    std::unordered_map<std::uint64_t, future<detail::raw_reply>> running_;
    std::vector<std::pair<int, std::vector<std::byte>>> outbox_;
    // Reply records not sent yet, in batches of at most max_reply_batch bytes (a larger
    // record travels alone): no message may reach MPI's 2 GiB limit however many large
    // results finish while the main thread is busy.
    std::vector<std::vector<std::byte>> replies_;
};

/// Serves rank 0 until it says stop: the loop of every rank but 0.
void serve_rank(comm& c, int default_workers);

}  // namespace procpool::mpi_impl
