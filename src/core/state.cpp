#include "procpool/detail/state.hpp"

#include <climits>
#include <cstdio>
#include <exception>
#include <utility>

#include "procpool/error.hpp"

namespace procpool::detail {

state_base::~state_base() {
    // A state that never completed (its executor vanished) still owns its callbacks.
    while (cb_head_ != nullptr) delete std::exchange(cb_head_, cb_head_->next);
}

void report_callback_error() noexcept {
    const char* what = "unknown exception";
    try {
        throw;
    } catch (const std::exception& e) {
        what = e.what();
        std::fprintf(stderr, "procpool: a future's done-callback threw: %s\n", what);
        return;
    } catch (...) {
    }
    std::fprintf(stderr, "procpool: a future's done-callback threw: %s\n", what);
}

void state_base::set_cancelled(const char* why) noexcept {
    try {
        error_ = std::make_exception_ptr(task_cancelled(why));
    } catch (...) {
        error_ = std::current_exception();
    }
    publish(cancelled);
}

bool state_base::cancel() noexcept {
    if (try_claim()) {
        set_cancelled("task cancelled before it started");
        return true;
    }
    if (is_done()) return false;
    return hook_ != nullptr && hook_->cancel_running(*this);
}

void state_base::publish(std::uint32_t extra) noexcept {
    const std::uint32_t old = flags_.fetch_or(done | extra, std::memory_order_acq_rel);
    if ((old & waiters) != 0) futex_wake(&flags_, INT_MAX);
    if ((old & callbacks) != 0) run_callbacks();
}

bool state_base::wait(const std::chrono::steady_clock::time_point* deadline) const noexcept {
    if (hook_ != nullptr) {
        if (is_done() || hook_->help_wait(*this)) return true;
    } else if (spin_until([this] { return is_done(); })) {
        return true;
    }
    for (;;) {
        const std::uint32_t old = flags_.fetch_or(waiters, std::memory_order_acq_rel);
        if ((old & done) != 0) return true;
        if (!futex_wait(&flags_, old | waiters, deadline)) return is_done();
    }
}

void state_base::add_callback(callback_node* cb) noexcept {
    {
        std::lock_guard lock(cb_mutex_);
        const std::uint32_t old = flags_.fetch_or(callbacks, std::memory_order_acq_rel);
        if ((old & done) == 0) {
            if (cb_tail_ != nullptr) {
                cb_tail_->next = cb;
            } else {
                cb_head_ = cb;
            }
            cb_tail_ = cb;
            return;
        }
    }
    cb->run();
    delete cb;
}

void state_base::run_callbacks() noexcept {
    callback_node* list = nullptr;
    {
        std::lock_guard lock(cb_mutex_);
        list = cb_head_;
        cb_head_ = cb_tail_ = nullptr;
    }
    while (list != nullptr) {
        callback_node* next = list->next;
        list->run();
        delete list;
        list = next;
    }
}

}  // namespace procpool::detail
