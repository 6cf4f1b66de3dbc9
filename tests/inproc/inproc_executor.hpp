// A test-only executor that runs remote tasks in threads of this process through the same
// envelope and worker-side loop (remote::serve) as process_pool, without forking: the
// proof that a new transport is one folder. What it provides is all a transport needs:
//   - the front: derive from detail::remote_executor and implement enqueue/auto_chunksize;
//   - the worker end: a remote::worker_transport (here a queue in memory);
//   - the reply path: decode each reply into its task (remote_task_base::decode).
// Attachments (shared arrays, big vectors) travel as references to the same blocks, since
// both ends share an address space. Timeouts in task_options are accepted, not enforced.
#pragma once

#include <fcntl.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "procpool/detail/remote_executor.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/error.hpp"
#include "procpool/executor.hpp"
#include "remote/envelope.hpp"
#include "remote/serve.hpp"

namespace procpool_test {

class inproc_executor
    : public procpool::detail::remote_executor<inproc_executor,
                                               procpool::detail::remote_task_base> {
    using task = procpool::detail::remote_task_base;

  public:
    /// Starts `workers` serving threads; `bulk_threshold`: vectors of at least this many
    /// bytes travel as attachments (as process_pool's shared_memory_threshold).
    explicit inproc_executor(int workers = 2, std::size_t bulk_threshold = std::size_t{1} << 20)
        : workers_(workers) {
        procpool::detail::check_workers(workers, "inproc_executor", "threads");
        bulk_threshold_ = bulk_threshold;
        cfg_.shared_threshold = bulk_threshold;
        for (int i = 0; i < workers; ++i) {
            threads_.emplace_back([this] {
                transport t(*this);
                procpool::remote::serve(t, cfg_);
            });
        }
    }
    ~inproc_executor() { shutdown(); }
    inproc_executor(const inproc_executor&) = delete;
    inproc_executor& operator=(const inproc_executor&) = delete;

    /// How many tasks run at once.
    int workers() const noexcept { return workers_; }

    /// Stops taking work; waits for queued tasks to finish, then for the threads.
    void shutdown(procpool::shutdown_options = {}) {
        {
            std::lock_guard lock(mu_);
            if (closed_) return;
            closed_ = true;
            for (int i = 0; i < workers_; ++i) queue_.push_back(message{});  // msg_exit each
        }
        cv_.notify_all();
        for (auto& th : threads_) th.join();
    }

    /// Replies received, ready reports included (one per worker).
    std::size_t replies() const {
        std::lock_guard lock(mu_);
        return replies_;
    }

    /// As a pool whose every task has a deadline: big argument vectors are copied into
    /// their blocks before the task is sent (remote_executor::copy_bulk_after_send_).
    void copy_bulk_before_send() noexcept { copy_bulk_after_send_ = false; }

    /// Blocks that had none of their bytes yet when their task was sent: big argument
    /// vectors copied in after the send, while the serving thread copies them out.
    std::size_t blocks_unwritten_at_send() const {
        std::lock_guard lock(mu_);
        return unwritten_at_send_;
    }

  private:
    friend class procpool::detail::remote_executor<inproc_executor, task>;

    // One request in flight: the envelope, the argument bytes, the blocks they name.
    struct message {
        std::uint32_t kind = procpool::remote::msg_exit;
        procpool::remote::task_header header{};
        std::vector<std::byte> args;
        procpool::detail::shm_table blocks;
    };

    // The worker end: a queue shared by the serving threads.
    class transport final : public procpool::remote::worker_transport {
      public:
        explicit transport(inproc_executor& ex) : ex_(ex) {}
        procpool::remote::request next() override {
            std::unique_lock lock(ex_.mu_);
            ex_.cv_.wait(lock, [&] { return !ex_.queue_.empty(); });
            current_ = std::move(ex_.queue_.front());
            ex_.queue_.pop_front();
            procpool::remote::request r;
            r.kind = current_.kind;
            r.task = current_.header;
            r.args = current_.args.data();
            r.args_len = current_.args.size();
            return r;
        }
        void release() noexcept override {}
        bool begin(procpool::remote::request&) noexcept override { return true; }
        procpool::detail::attachments* attachments() noexcept override {
            attachments_.emplace(&outgoing_, &current_.blocks, ex_.bulk_threshold_);
            return &*attachments_;
        }
        void reply(std::uint64_t seq, procpool::remote::run_status st, std::int64_t, std::int64_t,
                   std::vector<std::byte>& payload) override {
            ex_.on_reply(seq, st, payload, outgoing_);
            outgoing_.clear();
        }

      private:
        inproc_executor& ex_;
        message current_;
        std::vector<procpool::detail::shm_ref> outgoing_;
        std::optional<procpool::detail::shm_attachments> attachments_;
    };

    void enqueue(task& t, const std::vector<std::byte>& args) {
        message m;
        m.kind = procpool::remote::msg_task;
        m.args = args;
        std::size_t unwritten = 0;
        for (const auto& b : t.attachments) {
            if (b->progressive() && b->arrived(0) == 0) ++unwritten;
            // A read-only twin has no mapping in the sender: the receiving end maps it
            // from its descriptor, read-only, as a worker process would.
            m.blocks[b->id()] =
                b->data() != nullptr || b->bytes() == 0
                    ? b
                    : procpool::detail::shm_block::adopt(::fcntl(b->fd(), F_DUPFD_CLOEXEC, 0),
                                                         b->bytes(), false, false);
        }
        {
            std::lock_guard lock(mu_);
            if (closed_) throw procpool::pool_shut_down("inproc_executor: submit after shutdown");
            unwritten_at_send_ += unwritten;
            const std::uint64_t seq = next_seq_++;
            m.header = {seq, t.invoker, t.fn, static_cast<std::uint32_t>(m.blocks.size()), 0};
            t.shared().add_ref();  // the executor's reference, dropped when it resolves
            running_[seq] = &t;
            queue_.push_back(std::move(m));
        }
        cv_.notify_one();
    }

    std::size_t auto_chunksize(std::size_t n) const noexcept {
        const std::size_t per = n / (static_cast<std::size_t>(workers_) * 4);
        return per == 0 ? 1 : per;
    }

    // The parent end: resolve the task a reply belongs to.
    void on_reply(std::uint64_t seq, procpool::remote::run_status st,
                  const std::vector<std::byte>& payload,
                  const std::vector<procpool::detail::shm_ref>& sent) {
        task* t = nullptr;
        {
            std::lock_guard lock(mu_);
            ++replies_;
            if (seq == 0) return;  // ready report
            auto it = running_.find(seq);
            if (it == running_.end()) return;
            t = it->second;
            running_.erase(it);
        }
        procpool::detail::shm_table received;
        for (const auto& b : sent) received[b->id()] = b;
        t->attachments.clear();
        {
            procpool::detail::attachment_scope scope(nullptr, &received, bulk_threshold_);
            procpool::wire::reader in(payload.data(), payload.size());
            if (t->begin_resolve()) t->decode(st, in);
        }
        t->shared().release();
    }

    int workers_;
    procpool::remote::worker_config cfg_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<message> queue_;
    std::unordered_map<std::uint64_t, task*> running_;
    std::uint64_t next_seq_ = 1;
    std::size_t replies_ = 0;
    std::size_t unwritten_at_send_ = 0;
    bool closed_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace procpool_test
