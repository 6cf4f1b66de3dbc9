// The worker's end of the ring transport: requests come from the shared region's request
// ring (their shared arrays and large payloads as descriptors on the control socket),
// replies go to its completion ring. The loop itself is remote::serve.
#include <unistd.h>

#include <climits>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "ipc/ring.hpp"
#include "process/channel.hpp"
#include "process/output.hpp"
#include "process/protocol.hpp"
#include "process/region.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/wire.hpp"
#include "remote/serve.hpp"

namespace procpool::process {

static_assert(static_cast<std::uint32_t>(remote::serve_phase::initializer) == phase_initializer &&
                  static_cast<std::uint32_t>(remote::serve_phase::serving) == phase_serving,
              "the parent reads serve()'s phases from worker_region::phase");

namespace {

/// Exit code of a worker whose request ring was found damaged.
constexpr int corrupt_exit_code = 76;

class ring_worker final : public remote::worker_transport {
  public:
    ring_worker(worker_region* r, int ctl, int wake, std::size_t threshold, int out, int err,
                std::uint64_t output_limit)
        : r_(r),
          ctl_(ctl),
          wake_(wake),
          out_(out),
          err_(err),
          output_limit_(output_limit),
          req_(&r->requests, r->request_data(), r->ring_capacity),
          cmp_(&r->completions, r->completion_data(), r->ring_capacity),
          attachments_(&outgoing_, &cache_, threshold, true) {
        // With or without capture: a fork-method worker's copy of the parent's unflushed
        // stdio text would otherwise be printed again by the first fflush or exit() in the
        // worker (the parent prints it itself). A forkserver worker's buffers are empty.
        output_capture::discard_inherited();
    }

    remote::request next() override {
        for (;;) {
            // Spinning, it looks for the next frame's stamp only (see ring::peek).
            req_.ctl()->data.wait([&] { return peek(false); }, [&] { return peek(true); }, [] {},
                                  true);
            if (h_.type == msg_forget && h_.len == sizeof(std::uint64_t)) {
                std::uint64_t id = 0;
                std::memcpy(&id, payload_, sizeof id);
                cache_.erase(id);
                req_.pop(h_);
                continue;
            }
            remote::request r;
            r.kind = h_.type == msg_exit ? msg_exit : msg_task;
            if (r.kind == msg_exit) return r;
            if (h_.len < sizeof r.task) _exit(corrupt_exit_code);  // the parent never does this
            std::memcpy(&r.task, payload_, sizeof r.task);
            // Descriptors of shared arrays come first, in the order the parent sent them.
            if (r.task.nattach != 0) {
                try {
                    receive_attachments(ctl_, r.task.nattach, cache_, false);
                } catch (...) {  // NOLINT(bugprone-empty-catch)
                    // Unknown ids then fail the task's deserialization with a clear message.
                }
            }
            if (h_.type == msg_task_oob) {
                // The frame holds only the size; the bytes come as a memfd, taken in begin()
                // once the task is known to run (a skipped task's is only closed).
                std::memcpy(&large_size_, payload_ + sizeof r.task, sizeof large_size_);
                req_.pop(h_);
                popped_ = true;
                large_pending_ = true;
            } else {
                popped_ = false;
                r.args = payload_ + sizeof r.task;
                r.args_len = h_.len - sizeof r.task;
            }
            return r;
        }
    }

    void release() noexcept override {
        if (!popped_) req_.pop(h_);
        popped_ = true;
        large_.reset();
    }

    bool begin(remote::request& r) noexcept override {
        r_->started_ns.store(r.start_ns, std::memory_order_relaxed);
        // seq_cst store then seq_cst reads of the cancel words: pairs with the parent,
        // which writes a cancel word and then reads started_seq (see cancel_running).
        r_->started_seq.store(r.task.seq, std::memory_order_seq_cst);
        const bool run = !r_->is_skipped(r.task.seq);
        ran_ = run;
        if (large_pending_) {
            large_pending_ = false;
            if (!run) {
                discard_payload(ctl_);
            } else {
                try {
                    receive_payload(ctl_, 'A', large_size_, false, large_);
                    r.args = large_.data();
                    r.args_len = large_.size();
                } catch (const std::exception& e) {
                    // Without its arguments (args stays empty) the task fails to decode
                    // them; the message says why, if there is memory to say it.
                    try {
                        r.failure = std::string("worker could not receive the task's arguments: ") +
                                    e.what();
                    } catch (...) {  // NOLINT(bugprone-empty-catch)
                    }
                }
            }
        }
        return run;
    }

    detail::attachments* attachments() noexcept override { return &attachments_; }

    // Publishes one completion and wakes the parent if it sleeps.
    void reply(std::uint64_t seq, remote::run_status st, std::int64_t run_ns, std::int64_t end_ns,
               std::vector<std::byte>& out) override {
        // The task's captured output leads the payload (output_flag): it is read before
        // the completion is published, and the files are emptied only after, so a worker
        // dying in between leaves it to the task it belongs to (see output.hpp).
        const bool ran = std::exchange(ran_, false);
        std::size_t lead = 0;  // bytes of output_ written into the frame ahead of `out`
        std::uint32_t flags = 0;
        if (seq != 0 && ran && capture_.on() && capture_.collect(output_)) {
            lead = output_.size();
            flags = output_flag;
        }
        if (!outgoing_.empty() && !send_attachments(ctl_, outgoing_, false)) {
            outgoing_.clear();
            fail_with(out, st, "worker could not send a shared array back");
        }
        const completion_header ch{seq, run_ns, static_cast<std::uint32_t>(outgoing_.size()), 0,
                                   end_ns};
        outgoing_.clear();
        if (sizeof ch + lead + out.size() > cmp_.max_payload()) {
            if (lead != 0) {  // one payload: the output, then the result
                output_.insert(output_.end(), out.begin(), out.end());
                out.swap(output_);
                lead = 0;
            }
            if (!send_payload(ctl_, 'R', out.data(), out.size(), true, false)) {
                fail_with(out, st, "worker could not send a large result");
                flags = 0;
            } else {
                flags |= oob_flag;
                const std::uint64_t size = out.size();
                out.resize(sizeof size);
                std::memcpy(out.data(), &size, sizeof size);
            }
        }
        const std::uint32_t type = static_cast<std::uint32_t>(st) | flags;
        const auto len = static_cast<std::uint32_t>(sizeof ch + lead + out.size());
        std::byte* dst = reserve(len);
        // The ring's first pass: map its pages a batch at a time (prefault_until).
        process::prefault_until(r_->completion_data(), cap_, cmp_populated_,
                                static_cast<std::size_t>(dst - r_->completion_data()) + len);
        std::memcpy(dst, &ch, sizeof ch);
        if (lead != 0) std::memcpy(dst + sizeof ch, output_.data(), lead);
        if (!out.empty()) std::memcpy(dst + sizeof ch + lead, out.data(), out.size());
        cmp_.commit(len, type);
        // Threads of the parent asleep waiting for our tasks take the completion
        // themselves (help_wait); otherwise the supervisor does, if it sleeps.
        if (!r_->waiters.ring() && r_->parent.take_sleeper()) wake_parent();
        // A task that broke the capture files (closed fd 1 and the private copy): the next
        // task would get its output or none, so this worker ends; the parent replaces it.
        if (capture_.on() && !capture_.reset()) _exit(corrupt_exit_code);
    }

    void phase(remote::serve_phase p) noexcept override {
        // Tasks' output is captured from here; the initializer's goes where it went.
        if (p == remote::serve_phase::serving && out_ >= 0 &&
            !capture_.start(out_, err_, output_limit_)) {
            _exit(corrupt_exit_code);
        }
        r_->phase.store(static_cast<std::uint32_t>(p), std::memory_order_seq_cst);
    }

  private:
    static void fail_with(std::vector<std::byte>& out, remote::run_status& st, const char* why) {
        out.clear();
        wire::writer w(out);
        detail::encode_message(w, why);
        st = remote::run_status::serialization;
    }

    // True if a request is there; a corrupt request ring means the region was damaged (by
    // a task of ours: the parent only writes well-formed frames), so the worker stops.
    bool peek(bool read_index) {
        const ipc::peek_result r = req_.peek(h_, payload_, read_index);
        if (r == ipc::peek_result::corrupt) _exit(corrupt_exit_code);
        return r == ipc::peek_result::frame;
    }

    void wake_parent() const noexcept {
        const std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(wake_, &one, sizeof one);
    }

    std::byte* reserve(std::uint32_t len) {
        std::byte* p = nullptr;
        const auto room = [&] {
            p = cmp_.try_reserve(len);
            if (cmp_.corrupt()) _exit(corrupt_exit_code);
            return p != nullptr;
        };
        // Before sleeping for space: the parent must drain, so make sure it is awake.
        cmp_.ctl()->space.wait(
            room, [&] { wake_parent(); }, true);
        return p;
    }

    worker_region* r_;
    std::size_t cap_ = r_->ring_capacity;
    std::size_t cmp_populated_ = 0;  // bytes of the completion ring populated (prefault_until)
    int ctl_;
    int wake_;
    int out_;  // the capture files as the worker received them (-1: not captured)
    int err_;
    std::uint64_t output_limit_;
    output_capture capture_;
    std::vector<std::byte> output_;  // the current task's output section
    bool ran_ = false;               // the current task was started (not skipped)
    ipc::ring req_;
    ipc::ring cmp_;
    ipc::frame_header h_{};
    const std::byte* payload_ = nullptr;
    bool popped_ = true;
    bool large_pending_ = false;  // a msg_task_oob's memfd waits on the control socket
    std::uint64_t large_size_ = 0;
    mapped_payload large_;
    std::vector<detail::shm_ref> outgoing_;
    detail::shm_table cache_;  // shared arrays this worker has mapped, by the parent's id
    detail::shm_attachments attachments_;
};

}  // namespace

void serve_ring(worker_region* region, int ctl, int wake, int out, int err,
                const worker_config& cfg) {
    ring_worker w(region, ctl, wake, static_cast<std::size_t>(cfg.shared_threshold), out, err,
                  cfg.output_limit);
    const remote::serve_end end = remote::serve(w, cfg);
    _exit(end == remote::serve_end::initializer_failed ? startup_exit_code : 0);
}

}  // namespace procpool::process
