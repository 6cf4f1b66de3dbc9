// The parent-side record of a task that runs in another process, whatever carries it there
// (shared-memory rings today; any later transport): what every transport needs, no more.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/remote_call.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/detail/state.hpp"
#include "procpool/error.hpp"
#include "procpool/wire.hpp"

namespace procpool::detail {

/// The type-independent part of a remote task. An executor works through this interface;
/// `remote_task<R, Base>` adds the result type, and an executor that needs scheduling
/// fields of its own derives `Base` from this class (see process_pool's).
/// The two type-specific operations are function pointers set by remote_task, not virtual
/// functions: clang 14 can fail to emit the virtual members of a class template first
/// instantiated inside a generic lambda (as run_in's are), see detail::task_state.
class remote_task_base {
  public:
    /// The future's shared state (reference counting, completion).
    state_base& shared() noexcept { return *shared_; }
    /// Resolves the future from a worker's reply: its run status and payload.
    void decode(run_status status, wire::reader& in) noexcept { decode_(this, status, in); }

    /// Takes the exclusive right to resolve this task (cancel and completion can race).
    bool begin_resolve() noexcept { return !resolving_.exchange(true, std::memory_order_acq_rel); }
    /// True once some thread has claimed the right to resolve it (begin_resolve).
    bool resolve_begun() const noexcept { return resolving_.load(std::memory_order_acquire); }

    std::uint64_t invoker = 0;         ///< code offset of the invoker (see invoker_for)
    std::uint64_t fn = 0;              ///< code offset of the function (0 for empty classes)
    std::int64_t timeout_ns = -1;      ///< per-task deadline once started; -1: the pool's
    std::vector<shm_ref> attachments;  ///< shared arrays among the arguments (kept alive)

  protected:
    /// How remote_task decodes a reply into its typed state.
    using decode_fn = void (*)(remote_task_base*, run_status, wire::reader&) noexcept;
    remote_task_base(state_base* shared, decode_fn decode) noexcept
        : shared_(shared), decode_(decode) {}
    ~remote_task_base() = default;
    remote_task_base(const remote_task_base&) = delete;
    remote_task_base& operator=(const remote_task_base&) = delete;

  private:
    state_base* shared_;
    decode_fn decode_;
    std::atomic<bool> resolving_{false};
};

/// A worker's reply kept undecoded: what an executor that relays tasks for another
/// process (mpi_pool's serving ranks) passes on, to be decoded where the task was submitted.
struct raw_reply {
    run_status status = run_status::value;
    std::vector<std::byte> bytes;  ///< the reply's payload, as the worker wrote it
};

/// A remote task producing `R`: the future's state plus the executor's record `Base`.
template <class R, class Base = remote_task_base>
class remote_task final : public state<R>, public Base {
    static_assert(std::is_base_of_v<remote_task_base, Base>,
                  "an executor's task record must derive from detail::remote_task_base");

  public:
    remote_task() noexcept
        : Base(static_cast<state_base*>(this),
               [](remote_task_base* b, run_status st, wire::reader& in) noexcept {
                   static_cast<remote_task*>(b)->decode_reply(st, in);
               }) {
        static_cast<void>(&remote_task::destroy);  // likewise instantiates the destructor
    }

  private:
    void decode_reply(run_status status, wire::reader& in) noexcept {
        try {
            if constexpr (std::is_same_v<R, raw_reply>) {
                raw_reply r{status, {}};
                r.bytes.assign(in.data(), in.data() + in.remaining());
                this->set_value(std::move(r));
                return;
            }
            switch (status) {
                case run_status::value:
                    if constexpr (std::is_void_v<R>) {
                        this->set_value();
                    } else {
                        decode_value(in);
                    }
                    return;
                case run_status::cancelled:
                    this->set_cancelled("task cancelled before it started");
                    return;
                case run_status::serialization:
                    this->set_exception(
                        std::make_exception_ptr(serialization_error(decode_message(in))));
                    return;
                case run_status::exception:
                case run_status::init_failed:
                    this->set_exception(decode_exception(in));
                    return;
                case run_status::ready:
                    break;
            }
            this->set_exception(std::make_exception_ptr(
                serialization_error("worker sent an unknown completion type")));
        } catch (...) {
            this->set_exception(std::current_exception());
        }
    }

    static void destroy(remote_task* p) noexcept { delete p; }

    void decode_value(wire::reader& in) {
        if constexpr (!std::is_void_v<R> && !std::is_same_v<R, raw_reply>) {
            std::exception_ptr err;
            try {
                R r = wire::load<R>(in);
                this->set_value(std::move(r));
                return;
            } catch (const std::exception& e) {
                err = std::make_exception_ptr(serialization_error(
                    std::string("could not deserialize the task's result: ") + e.what()));
            }
            this->set_exception(err);
        }
    }
};

}  // namespace procpool::detail
