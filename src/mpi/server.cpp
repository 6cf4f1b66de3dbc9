#include "mpi/server.hpp"

#include <climits>
#include <exception>
#include <string>
#include <utility>

#include "mpi/backoff.hpp"
#include "procpool/detail/remote_executor.hpp"
#include "procpool/error.hpp"

namespace procpool::mpi_impl {

namespace {

// Replies that finish together share a message up to this size.
constexpr std::size_t max_reply_batch = std::size_t{1} << 20;
// The most one MPI message carries (its count is an int).
constexpr std::size_t max_message = static_cast<std::size_t>(INT_MAX);

}  // namespace

rank_server::~rank_server() { close_all(); }

bool rank_server::handle(const message& m) {
    const std::byte* p = m.body.data();
    const std::size_t n = m.body.size();
    switch (m.tag) {
        case tag_open: {
            open_msg o;
            try {
                o = decode_open(p, n);
            } catch (const std::exception& e) {
                post(tag_opened, encode(opened_msg{0, 0, host_, std::string("bad open message: ") +
                                                                   e.what()}));
                return true;
            }
            open(o);
            return true;
        }
        case tag_task:
            for_each_record<task_msg>(p, n, [this](const task_msg& h, const std::byte* args,
                                                   std::size_t len) { run(h, args, len); });
            return true;
        case tag_cancel:
            cancel(decode_u64(p, n), true);
            return true;
        case tag_cancel_task_pending:
            cancel(decode_u64(p, n), false);
            return true;
        case tag_cancel_pending:
            cancel_pending(static_cast<std::uint32_t>(decode_u64(p, n)));
            return true;
        case tag_close:
            close(static_cast<std::uint32_t>(decode_u64(p, n)));
            return true;
        case tag_ping:
            post(tag_pong, {});
            return true;
        case tag_stop:
            return false;
        default:
            return true;  // unknown: rank 0 of the same binary never sends one
    }
}

void rank_server::open(const open_msg& m) {
    opened_msg r{m.pool, 0, host_, {}};
    try {
        process_pool_options o;
        o.workers = m.workers > 0 ? m.workers : default_workers_;
        o.max_tasks_per_child = m.max_tasks_per_child;
        o.memory_limit = m.memory_limit;
        o.env = m.env;
        o.initializer = detail::initializer_access::make(m.init_invoker, m.init_fn, m.init_args);
        // Results come back by value over MPI: workers write every vector into the
        // reply's own bytes, never into a shared block only this node could map.
        o.shared_memory_threshold = SIZE_MAX;
        auto pool = std::make_unique<process_pool>(std::move(o));
        r.workers = pool->workers();
        pools_[m.pool] = std::move(pool);
    } catch (const std::exception& e) {
        r.error = e.what();
    }
    post(tag_opened, encode(r));
}

void rank_server::run(const task_msg& h, const std::byte* args, std::size_t n) {
    auto it = pools_.find(h.pool);
    if (it == pools_.end()) {
        reply_error(h.id, outcome_kind::shut_down, "mpi_pool: its pool is closed on this rank");
        return;
    }
    if (cancelled_.count(h.pool) != 0) {
        // Sent before rank 0 learnt of the shutdown (a submit racing with it).
        reply_error(h.id, outcome_kind::cancelled, "task cancelled: its pool shut down");
        return;
    }
    std::shared_ptr<received_arrays> arrays;
    if (h.arrays != 0) {
        arrays = std::make_shared<received_arrays>();
        try {
            const std::size_t used = read_arrays(args, n, h.arrays, linked_, *arrays);
            args += used;
            n -= used;
        } catch (const std::exception& e) {
            reply_error(h.id, outcome_kind::serialization, e.what());
            return;
        }
    }
    future<detail::raw_reply> f;
    try {
        f = detail::relay_access::submit(*it->second, h.invoker, h.fn, h.timeout_ns, args, n,
                                         arrays ? arrays->blocks : std::vector<detail::shm_ref>{});
    } catch (const std::exception& e) {
        reply_error(h.id, outcome_kind::shut_down, e.what());
        return;
    }
    {
        std::lock_guard lock(mu_);
        running_.emplace(h.id, f);
    }
    const std::uint64_t id = h.id;
    f.on_done([this, id, arrays](const future<detail::raw_reply>& done) {
        {
            std::lock_guard lock(mu_);
            running_.erase(id);
        }
        reply(id, done, arrays.get());
    });
}

void rank_server::cancel(std::uint64_t id, bool stop_running) {
    future<detail::raw_reply> f;
    {
        std::lock_guard lock(mu_);
        auto it = running_.find(id);
        if (it == running_.end()) return;  // finished already: its reply is on its way
        f = it->second;
    }
    // Either way the outcome replies as usual: cancelled, or (not stopped) its result.
    if (stop_running) {
        f.cancel();  // a running task's worker is killed
    } else {
        static_cast<void>(f.cancel_pending());
    }
}

void rank_server::cancel_pending(std::uint32_t pool) {
    // Rank 0 shut the pool down: the tasks it sent here that have not started resolve as
    // cancelled (their replies follow); no more tasks of it will run here.
    if (auto it = pools_.find(pool); it != pools_.end()) {
        cancelled_.insert(pool);
        try {
            it->second->shutdown({.wait = false, .cancel_pending = true});
        } catch (...) {  // NOLINT(bugprone-empty-catch): its tasks still resolve
        }
    }
    post(tag_pending_cancelled, encode_u64(pool));
}

void rank_server::close(std::uint32_t pool) noexcept {
    cancelled_.erase(pool);
    auto it = pools_.find(pool);
    if (it == pools_.end()) return;
    try {
        it->second->shutdown({.wait = true, .cancel_pending = true});
    } catch (...) {  // NOLINT(bugprone-empty-catch): closing must go on
    }
    pools_.erase(it);
}

void rank_server::close_all() noexcept {
    while (!pools_.empty()) close(pools_.begin()->first);
}

void rank_server::reply(std::uint64_t id, const future<detail::raw_reply>& f,
                        const received_arrays* arrays) {
    reply_msg h{id, outcome_kind::relayed, detail::run_status::value, 0, 0, 0};
    if (auto e = f.exception()) {
        std::string text;
        try {
            std::rethrow_exception(e);
        } catch (const worker_died& d) {
            h.kind = outcome_kind::worker_died;
            h.signal = d.signal();
            h.exit_code = d.exit_code();
            text = d.what();
        } catch (const task_timeout& t) {
            h.kind = outcome_kind::timeout;
            text = t.what();
        } catch (const task_cancelled& c) {
            h.kind = outcome_kind::cancelled;
            text = c.what();
        } catch (const protocol_error& pe) {
            h.kind = outcome_kind::protocol;
            text = pe.what();
        } catch (const serialization_error& se) {
            h.kind = outcome_kind::serialization;
            text = se.what();
        } catch (const pool_shut_down& s) {
            h.kind = outcome_kind::shut_down;
            text = s.what();
        } catch (const std::exception& x) {
            h.kind = outcome_kind::other;
            text = x.what();
        } catch (...) {
            h.kind = outcome_kind::other;
            text = "unknown error";
        }
        post_reply(h, reinterpret_cast<const std::byte*>(text.data()), text.size(), arrays);
        return;
    }
    const detail::raw_reply& r = f.get();
    h.status = r.status;
    post_reply(h, r.bytes.data(), r.bytes.size(), arrays);
}

void rank_server::reply_error(std::uint64_t id, outcome_kind kind, const std::string& text) {
    reply_msg h{id, kind, detail::run_status::value, 0, 0, 0};
    post_reply(h, reinterpret_cast<const std::byte*>(text.data()), text.size());
}

void rank_server::post_reply(reply_msg h, const std::byte* body, std::size_t n,
                             const received_arrays* arrays) {
    // What the task changed in shared arrays it got by value goes back before the body.
    std::vector<std::byte> with_changes;
    if (arrays != nullptr) {
        h.changes = append_changes(with_changes, *arrays);
        if (h.changes != 0) {
            with_changes.insert(with_changes.end(), body, body + n);
            body = with_changes.data();
            n = with_changes.size();
        }
    }
    if (sizeof h + n > max_message) {
        // Too large for one MPI message: the task fails, the rank goes on serving.
        const std::string text = "mpi_pool: the task's result takes " + std::to_string(n) +
                                 " bytes; one MPI message carries at most 2 GiB. Return less, "
                                 "or write the data to a file every node can read";
        const reply_msg e{h.id, outcome_kind::serialization, detail::run_status::value, 0, 0, 0};
        post_reply(e, reinterpret_cast<const std::byte*>(text.data()), text.size());
        return;
    }
    // Replies that finish while the main thread is busy leave together, in few messages.
    std::lock_guard lock(mu_);
    if (replies_.empty() ||
        (!replies_.back().empty() && replies_.back().size() + sizeof h + n > max_reply_batch)) {
        replies_.emplace_back();
    }
    append(replies_.back(), h, body, n);
}

void rank_server::post(int tag, std::vector<std::byte> body) {
    std::lock_guard lock(mu_);
    outbox_.emplace_back(tag, std::move(body));
}

bool rank_server::take_outbox(std::vector<std::pair<int, std::vector<std::byte>>>& out) {
    std::lock_guard lock(mu_);
    if (outbox_.empty() && replies_.empty()) return false;
    out.swap(outbox_);
    for (auto& batch : replies_) out.emplace_back(tag_reply, std::move(batch));
    replies_.clear();
    return true;
}

bool rank_server::busy() const {
    std::lock_guard lock(mu_);
    return !running_.empty();
}

void serve_rank(comm& c, int default_workers) {
    rank_server srv(default_workers);
    std::vector<std::pair<int, std::vector<std::byte>>> out;
    message m;
    backoff idle;
    bool serving = true;
    while (serving) {
        bool did = false;
        while (c.try_receive(0, m)) {
            did = true;
            if (!srv.handle(m)) {
                serving = false;
                break;
            }
        }
        if (srv.take_outbox(out)) {
            did = true;
            for (auto& [tag, body] : out) c.send(0, tag, std::move(body));
            out.clear();
        }
        did = c.progress_sends() || did;
        if (did) {
            idle.reset();
        } else {
            idle.pause(srv.busy() || c.sends_in_flight() != 0);
        }
    }
    // Rank 0 stops us only once its pools are closed; close anything left all the same.
    srv.close_all();
    if (srv.take_outbox(out)) {
        for (auto& [tag, body] : out) c.send(0, tag, std::move(body));
    }
    c.flush();
}

}  // namespace procpool::mpi_impl
