#include "mpi/engine.hpp"

#include <signal.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <climits>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>

#include "mpi/arrays.hpp"
#include "mpi/backoff.hpp"
#include "trace/monitor.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/error.hpp"
#include "procpool/wire.hpp"

namespace procpool::mpi_impl {

namespace {

// Small tasks share messages (one MPI send for many); a batch stops growing here.
constexpr std::size_t max_batch_bytes = std::size_t{1} << 20;
// Tasks with at least this many bytes of arguments travel alone.
constexpr std::size_t alone_bytes = std::size_t{64} << 10;
// The most one MPI message carries (its count is an int).
constexpr std::size_t max_message_bytes = static_cast<std::size_t>(INT_MAX);

// Liveness of serving ranks (check_liveness). A rank that holds tasks and has sent
// nothing for `ping_after` is pinged; its serving loop answers at once, even while its
// workers run hour-long tasks. Unanswered for `silent_overdue` while it holds a task past
// its timeout plus `overdue_grace` (the rank enforces timeouts itself, so only a rank that
// stopped running can miss one), or for `silent_any` in any case, it is silent: its tasks
// fail and it gets no new ones until it answers again.
constexpr std::int64_t ms_ns = 1'000'000;
constexpr std::int64_t ping_after = 1000 * ms_ns;
constexpr std::int64_t overdue_grace = 1000 * ms_ns;
constexpr std::int64_t silent_overdue = 5000 * ms_ns;
constexpr std::int64_t silent_any = 60'000 * ms_ns;
constexpr std::int64_t check_every = 100 * ms_ns;
// Shared arrays copied to one rank (by value) by tasks not resolved yet: past this, the
// next such task waits on rank 0 (unless the rank holds none), so a map over slices of a
// big array does not hold a copy per task in flight on both sides.
constexpr std::size_t max_copied_in_flight = std::size_t{512} << 20;
// At exit, how long a silent rank has to answer before the job is aborted (MPI_Finalize
// would wait for it forever).
constexpr std::int64_t stop_wait = 10'000 * ms_ns;

std::string seconds(std::int64_t ns) {
    return std::to_string((ns + 500 * ms_ns) / (1000 * ms_ns)) + " s";
}

pool_ref& owner(detail::mpi_task_base& t) noexcept { return *static_cast<pool_ref*>(t.pool); }

// "worker died (SIGSEGV): detail" → "detail": the rank's own wording, without the prefix
// worker_died's constructor writes again.
std::string death_detail(const std::string& text) {
    const auto close = text.find("): ");
    if (text.rfind("worker died (", 0) == 0 && close != std::string::npos) {
        return text.substr(close + 3);
    }
    return text;
}

}  // namespace

std::string error_text(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "unknown error";
    }
}

void resolve_from_reply(detail::mpi_task_base& t, const reply_msg& h, const std::byte* body,
                        std::size_t n, const std::string& where, bool claimed) noexcept {
    if (h.kind == outcome_kind::relayed) {
        if (!claimed && !t.begin_resolve()) return;
        wire::reader in(body, n);
        // Replies carry every vector in their own bytes: no shared blocks across ranks.
        detail::attachment_scope none(nullptr);
        t.decode(h.status, in);
        return;
    }
    if (!claimed && !t.begin_resolve()) return;
    const std::string text(reinterpret_cast<const char*>(body), n);
    detail::state_base& s = t.shared();
    auto fail = [&](auto err) { s.set_exception(std::make_exception_ptr(std::move(err))); };
    try {
        switch (h.kind) {
            case outcome_kind::worker_died: {
                std::string d = death_detail(text);
                fail(worker_died(h.signal, h.exit_code, d.empty() ? where : d + " " + where));
                return;
            }
            case outcome_kind::timeout: fail(task_timeout(text + " " + where)); return;
            case outcome_kind::cancelled: s.set_cancelled((text + " " + where).c_str()); return;
            case outcome_kind::protocol: fail(protocol_error(text + " " + where)); return;
            case outcome_kind::serialization: fail(serialization_error(text + " " + where)); return;
            case outcome_kind::shut_down: fail(pool_shut_down(text + " " + where)); return;
            case outcome_kind::relayed:
            case outcome_kind::other: break;
        }
        fail(error(text + " " + where));
    } catch (...) {
        s.set_exception(std::current_exception());
    }
}

engine::engine(comm& c, std::vector<rank_link> servers) : c_(c), servers_(std::move(servers)) {
    const std::int64_t now = trace::clock_ns();
    for (auto& s : servers_) s.last_heard_ns = now;
    thread_ = std::thread([this] { loop(); });
    thread_id_ = thread_.get_id();
}

engine::~engine() { stop(); }

std::uint64_t engine::next_id() noexcept { return ids_.fetch_add(1, std::memory_order_relaxed) + 1; }

std::uint32_t engine::next_pool_id() noexcept {
    return pool_ids_.fetch_add(1, std::memory_order_relaxed) + 1;
}

bool engine::post(inbox& add) {
    std::lock_guard lock(mu_);
    if (!accepting_) return false;
    for (auto& t : add.tasks) in_.tasks.push_back(t);
    for (auto id : add.cancels) in_.cancels.push_back(id);
    for (auto id : add.cancels_pending) in_.cancels_pending.push_back(id);
    for (auto& r : add.cancel_pools) in_.cancel_pools.push_back(std::move(r));
    for (auto id : add.closes) in_.closes.push_back(id);
    for (auto& o : add.opens) in_.opens.push_back(std::move(o));
    if (add.stop) {
        in_.stop = true;
        accepting_ = false;
    }
    if (sleeping_) cv_.notify_one();
    return true;
}

bool engine::stopped() const {
    std::lock_guard lock(mu_);
    return !accepting_;
}

std::vector<mpi_rank_info> engine::open_pool(open_msg m, int in_flight_per_worker) {
    inbox add;
    open_request r;
    r.msg = std::move(m);
    r.per_worker = in_flight_per_worker;
    r.done = std::make_shared<promise<std::vector<mpi_rank_info>>>();
    auto f = r.done->get_future();
    add.opens.push_back(std::move(r));
    if (!post(add)) throw error("mpi_pool: created after mpi_finalize()");
    return f.get();
}

void engine::close_pool(std::uint32_t pool) {
    inbox add;
    add.closes.push_back(pool);
    post(add);
}

void engine::cancel_pending(std::uint32_t pool) {
    inbox add;
    cancel_request r;
    r.pool = pool;
    // A done-callback runs on the engine's thread: waiting there would wait for itself.
    const bool wait = std::this_thread::get_id() != thread_id_;
    std::optional<future<void>> f;
    if (wait) {
        r.done = std::make_shared<promise<void>>();
        f = r.done->get_future();
    }
    add.cancel_pools.push_back(std::move(r));
    if (!post(add) || !f) return;  // stopped: no rank holds a task any more
    f->wait();
}

bool engine::submit(detail::mpi_task_base& t, std::uint32_t pool) {
    std::lock_guard lock(mu_);
    if (!accepting_) return false;
    in_.tasks.emplace_back(&t, pool);
    if (sleeping_) cv_.notify_one();
    return true;
}

void engine::cancel(std::uint64_t id) {
    inbox add;
    add.cancels.push_back(id);
    post(add);
}

void engine::cancel_if_pending(std::uint64_t id) {
    inbox add;
    add.cancels_pending.push_back(id);
    post(add);
}

void engine::stop() {
    // Called once, by mpi_finalize, or by the destructor after it (then a no-op).
    if (!thread_.joinable()) return;
    inbox add;
    add.stop = true;
    post(add);
    thread_.join();
}

std::string engine::where(int rank) const {
    const std::size_t i = server_index(rank);
    const std::string host = i < servers_.size() ? servers_[i].host : std::string("?");
    return "(on host " + host + ", MPI rank " + std::to_string(rank) + ")";
}

void engine::fail_task(detail::mpi_task_base& t, std::exception_ptr e) noexcept {
    if (t.begin_resolve()) t.shared().set_exception(std::move(e));
    owner(t).release_task(t);
}

// Moves what other threads posted into the engine's own inbox; false if there was nothing.
bool engine::take_inbox() {
    std::unique_lock lock(mu_);
    if (in_.empty()) return false;
    std::swap(in_, work_);
    return true;
}

// How many of a pool's tasks a rank may hold. Fixed if the pool says so; otherwise about
// a millisecond of the rank's recent throughput: tiny tasks need many in flight to cover
// the round trip, long ones only two per worker so the rest stay on rank 0 and go to
// whichever rank frees up first. The throughput it measures grows with the window, so
// the window settles where the rank stops getting faster.
int engine::window(const pool_state& p, std::size_t server) const noexcept {
    const int workers = p.workers[server];
    if (workers == 0) return 0;
    if (p.per_worker > 0) {
        // In 64 bits: workers × a large in_flight_per_worker overflows an int, and a
        // negative window would never send a task.
        return static_cast<int>(
            std::min<std::int64_t>(std::int64_t{workers} * p.per_worker, INT_MAX));
    }
    const double per_ms = servers_[server].rate * 1e6;
    const double lo = 2.0 * workers, hi = 64.0 * workers;
    return static_cast<int>(std::clamp(per_ms, lo, hi));
}

void engine::dispatch(pool_state& p) {
    // Tasks that go to one rank in this round travel in one message.
    std::vector<std::vector<std::byte>>& batch = batches_;
    batch.resize(servers_.size());
    bool any = false;
    const std::int64_t now = p.pending.empty() ? 0 : trace::clock_ns();
    while (!p.pending.empty()) {
        // The rank with the most free room: uneven task lengths keep every worker busy.
        std::size_t best = servers_.size();
        int best_free = 0;
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            if (servers_[i].lost || servers_[i].silent) continue;
            const int free = window(p, i) - p.inflight[i];
            if (free > best_free) {
                best = i;
                best_free = free;
            }
        }
        if (best == servers_.size()) break;
        detail::mpi_task_base* t = p.pending.front();
        std::size_t copied = 0;
        if (!servers_[best].same_node) {
            for (const auto& b : t->attachments) copied += b->bytes();
            const std::size_t held = servers_[best].copied_in_flight;
            if (copied != 0 && held != 0 && held + copied > max_copied_in_flight) break;
        }
        p.pending.pop_front();
        task_msg h{t->id, p.id, 0, t->invoker, t->fn, t->timeout_ns, 0};
        if (!t->attachments.empty()) {
            // Shared arrays: a section before the arguments, by reference to a rank that
            // can open this process's memory, by value to any other. Such a task travels
            // alone.
            std::vector<std::byte> section;
            try {
                append_arrays(section, t->attachments, servers_[best].same_node,
                              max_message_bytes - sizeof h - t->args.size());
            } catch (...) {
                fail_task(*t, std::current_exception());
                continue;
            }
            h.arrays = static_cast<std::uint32_t>(t->attachments.size());
            section.insert(section.end(), t->args.begin(), t->args.end());
            std::vector<std::byte> one;
            append(one, h, section.data(), section.size());
            c_.send(servers_[best].rank, tag_task, std::move(one));
        } else if (t->args.size() >= alone_bytes) {
            // Large arguments go in a message of their own, at once: the rank starts on
            // it while the next one is still on its way.
            std::vector<std::byte> one;
            append(one, h, t->args.data(), t->args.size());
            c_.send(servers_[best].rank, tag_task, std::move(one));
        } else {
            if (batch[best].size() + sizeof h + t->args.size() > max_batch_bytes) {
                c_.send(servers_[best].rank, tag_task, std::move(batch[best]));
                batch[best] = {};
            }
            append(batch[best], h, t->args.data(), t->args.size());
        }
        std::vector<std::byte>().swap(t->args);
        t->rank = servers_[best].rank;
        ++p.inflight[best];
        ++servers_[best].held;
        servers_[best].copied_in_flight += copied;
        inflight_.emplace(t->id, sent_task{t, now, copied});
        any = true;
    }
    if (!any) return;
    for (std::size_t i = 0; i < servers_.size(); ++i) {
        if (batch[i].empty()) continue;
        // A failed send is an MPI error: with Open MPI 4 the job is already ending.
        c_.send(servers_[i].rank, tag_task, std::move(batch[i]));
        batch[i] = {};
    }
}

void engine::on_reply(const message& m) {
    std::size_t records = 0;
    try {
        for_each_record<reply_msg>(
            m.body.data(), m.body.size(),
            [this, &records](const reply_msg& h, const std::byte* body, std::size_t n) {
                auto it = inflight_.find(h.id);
                if (it == inflight_.end()) {
                    orphaned_blocks_.erase(h.id);  // a silent rank's late answer
                    return;
                }
                detail::mpi_task_base& t = *it->second.task;
                forget_inflight(t);
                bool claimed = false;
                if (h.changes != 0) {
                    // What the task changed in shared arrays it got by value, written
                    // back before its future resolves, and only if it resolves now: a
                    // task cancelled meanwhile (cancel() resolved it at once) must not
                    // change the arrays after that.
                    if (!t.begin_resolve()) {
                        owner(t).release_task(t);
                        ++records;
                        return;
                    }
                    claimed = true;
                    try {
                        const std::size_t used = apply_changes(body, n, h.changes, t.attachments);
                        body += used;
                        n -= used;
                    } catch (...) {
                        t.shared().set_exception(std::current_exception());
                        owner(t).release_task(t);
                        ++records;
                        return;
                    }
                }
                resolve_from_reply(t, h, body, n, where(t.rank), claimed);
                owner(t).release_task(t);
                ++records;
            });
    } catch (const serialization_error&) {
        // A rank of the same binary never sends a malformed batch; what was read is done.
    }
    if (m.source < 1 || static_cast<std::size_t>(m.source) > servers_.size()) return;
    rank_link& r = servers_[server_index(m.source)];
    const std::int64_t now = trace::clock_ns();
    if (r.last_reply_ns != 0 && now > r.last_reply_ns) {
        const double inst = static_cast<double>(records) / static_cast<double>(now - r.last_reply_ns);
        r.rate = r.rate == 0 ? inst : 0.8 * r.rate + 0.2 * inst;
    }
    r.last_reply_ns = now;
}

void engine::forget_inflight(detail::mpi_task_base& t) noexcept {
    const std::size_t server = server_index(t.rank);
    if (auto it = inflight_.find(t.id); it != inflight_.end()) {
        servers_[server].copied_in_flight -= it->second.copied;
        inflight_.erase(it);
    }
    if (auto p = pools_.find(t.pool_id); p != pools_.end()) --p->second.inflight[server];
    --servers_[server].held;
}

void engine::on_opened(const message& m) {
    opened_msg o;
    try {
        o = decode_opened(m.body.data(), m.body.size());
    } catch (...) {
        return;
    }
    auto it = opening_.find(o.pool);
    if (it == opening_.end()) return;
    open_request& r = it->second;
    auto w = std::find(r.waiting.begin(), r.waiting.end(), m.source);
    if (w == r.waiting.end()) return;  // it was silent: the pool opened without it
    r.waiting.erase(w);
    if (o.error.empty()) {
        r.infos.push_back({m.source, o.host, o.workers});
    } else {
        r.errors += "\n  MPI rank " + std::to_string(m.source) + " on host " + o.host + ": " + o.error;
    }
    if (r.waiting.empty()) finish_open(it);
}

void engine::finish_open(std::unordered_map<std::uint32_t, open_request>::iterator it) {
    open_request& r = it->second;
    if (r.errors.empty() && r.infos.empty()) {
        r.errors = " none answered (every serving rank stopped answering)";
    }
    if (!r.errors.empty()) {
        // Close it where it did open, then fail the constructor.
        for (const auto& s : servers_) {
            if (!s.lost) c_.send(s.rank, tag_close, encode_u64(r.msg.pool));
        }
        r.done->set_exception(std::make_exception_ptr(
            error("mpi_pool: could not start workers on every rank:" + r.errors)));
    } else {
        std::sort(r.infos.begin(), r.infos.end(),
                  [](const mpi_rank_info& a, const mpi_rank_info& b) { return a.rank < b.rank; });
        pool_state p;
        p.id = r.msg.pool;
        p.per_worker = r.per_worker;
        p.workers.assign(servers_.size(), 0);
        p.inflight.assign(servers_.size(), 0);
        for (const auto& info : r.infos) {
            p.workers[server_index(info.rank)] = info.workers;
        }
        pools_.emplace(p.id, std::move(p));
        r.done->set_value(std::move(r.infos));
    }
    opening_.erase(it);
}

void engine::on_pending_cancelled(const message& m) {
    std::uint32_t pool = 0;
    try {
        pool = static_cast<std::uint32_t>(decode_u64(m.body.data(), m.body.size()));
    } catch (...) {
        return;
    }
    // A rank confirms in the order the requests reached it: the first request for this
    // pool still waiting for that rank is the one confirmed.
    auto it = std::find_if(cancelling_.begin(), cancelling_.end(), [&](const cancel_request& r) {
        return r.pool == pool &&
               std::find(r.waiting.begin(), r.waiting.end(), m.source) != r.waiting.end();
    });
    if (it == cancelling_.end()) return;
    it->waiting.erase(std::find(it->waiting.begin(), it->waiting.end(), m.source));
    if (!it->waiting.empty()) return;
    if (it->done) it->done->set_value();
    cancelling_.erase(it);
}

void engine::on_message(const message& m) {
    switch (m.tag) {
        case tag_reply: on_reply(m); break;
        case tag_opened: on_opened(m); break;
        case tag_pending_cancelled: on_pending_cancelled(m); break;
        default: break;
    }
}

// Takes the tasks with these ids out of the pools' queues and lets them go (their
// cancellers resolved them). One pass per pool for the whole batch, stopping once all are
// found: cancelling many queued tasks in any order costs linear time, not quadratic.
// Takes the tasks in `ids` out of the queues on rank 0. `resolve`: they are resolved here
// as cancelled (cancel_pending); otherwise their canceller already resolved them.
void engine::drop_queued(std::unordered_set<std::uint64_t>& ids, bool resolve) noexcept {
    for (auto& [pid, p] : pools_) {
        if (ids.empty()) return;
        auto& q = p.pending;
        std::size_t w = 0, r = 0;
        for (; r < q.size() && !ids.empty(); ++r) {
            detail::mpi_task_base* t = q[r];
            if (ids.erase(t->id) != 0) {
                if (resolve && t->begin_resolve()) {
                    t->shared().set_cancelled("task cancelled before it started");
                }
                owner(*t).release_task(*t);
                continue;
            }
            q[w++] = t;
        }
        if (w == r) continue;
        for (; r < q.size(); ++r) q[w++] = q[r];
        q.resize(w);
    }
}

// Tasks still queued on rank 0 when the engine stops: with no rank left to run them
// (every window closed), they would never resolve.
void engine::fail_pending(const char* why) noexcept {
    for (auto& [id, p] : pools_) {
        auto pending = std::move(p.pending);
        p.pending.clear();
        for (auto* t : pending) fail_task(*t, std::make_exception_ptr(pool_shut_down(why)));
    }
}

void engine::lose_rank(std::size_t server, const std::string& why) {
    // Only reachable with an MPI that reports a lost rank instead of ending the job
    // (ULFM); Open MPI 4 aborts every rank first. Fails what the rank held, keeps serving
    // with the others.
    rank_link& s = servers_[server];
    if (s.lost) return;
    s.lost = true;
    std::vector<detail::mpi_task_base*> held;
    for (auto& [id, e] : inflight_) {
        if (e.task->rank == s.rank) held.push_back(e.task);
    }
    for (auto* t : held) {
        forget_inflight(*t);
        fail_task(*t, std::make_exception_ptr(worker_died(
                          9, -1, "its MPI rank was lost (" + why + ") " + where(s.rank))));
    }
}

void engine::heard_from(int rank, std::int64_t now) noexcept {
    if (rank < 1 || static_cast<std::size_t>(rank) > servers_.size()) return;
    rank_link& s = servers_[server_index(rank)];
    s.last_heard_ns = now;
    s.ping_sent_ns = 0;
    if (!s.silent) return;
    s.silent = false;
    std::fprintf(stderr, "procpool: mpi_pool: MPI rank %d on host %s answers again; it gets new tasks\n",
                 s.rank, s.host.c_str());
}

// Finds serving ranks that stopped running (a stopped process, a frozen node, a file
// system that hangs it): without this, a task on such a rank would never resolve, even
// one with a timeout, since the rank enforces timeouts itself. See the constants above.
void engine::check_liveness(std::int64_t now) {
    if (now < next_check_ns_) return;
    next_check_ns_ = now + check_every;
    std::vector<char> overdue(servers_.size(), 0);
    for (const auto& [id, e] : inflight_) {
        const auto* t = e.task;
        if (t->timeout_ns > 0 && now - e.sent_ns > t->timeout_ns + overdue_grace) {
            overdue[server_index(t->rank)] = 1;
        }
    }
    std::vector<char> waited_for(servers_.size(), 0);
    for (const auto& [id, r] : opening_) {
        for (int rank : r.waiting) waited_for[server_index(rank)] = 1;
    }
    for (const auto& r : cancelling_) {
        for (int rank : r.waiting) waited_for[server_index(rank)] = 1;
    }
    for (std::size_t i = 0; i < servers_.size(); ++i) {
        rank_link& s = servers_[i];
        if (s.lost) continue;
        // A silent rank is pinged too, to learn when it answers again.
        const bool needed = s.held > 0 || waited_for[i] != 0 || s.silent;
        if (!needed || now - s.last_heard_ns < ping_after) continue;
        if (s.ping_sent_ns == 0) {
            c_.send(s.rank, tag_ping, {});
            s.ping_sent_ns = now;
            continue;
        }
        const std::int64_t limit = overdue[i] != 0 ? silent_overdue : silent_any;
        if (!s.silent && now - s.ping_sent_ns > limit) declare_silent(i, now);
    }
    for (auto& [id, p] : pools_) fail_unservable(p, now);
}

// A pool none of whose ranks can take tasks (all silent, or lost): its queued tasks would
// wait for a rank that may never answer again. One with a timeout fails once it has waited
// that long (plus the grace) since no rank could take it; any other after `silent_any`.
void engine::fail_unservable(pool_state& p, std::int64_t now) {
    bool usable = false;
    for (std::size_t i = 0; i < servers_.size(); ++i) {
        if (!servers_[i].lost && !servers_[i].silent && p.workers[i] > 0) usable = true;
    }
    if (usable || p.pending.empty()) {
        p.no_rank_since = 0;
        return;
    }
    if (p.no_rank_since == 0) p.no_rank_since = now;
    std::vector<detail::mpi_task_base*> timed_out, given_up;
    std::deque<detail::mpi_task_base*> keep;
    for (auto* t : p.pending) {
        const std::int64_t since = std::max(t->queued_ns, p.no_rank_since);
        if (t->timeout_ns > 0 && now - since > t->timeout_ns + overdue_grace) {
            timed_out.push_back(t);
        } else if (now - p.no_rank_since > silent_any) {
            given_up.push_back(t);
        } else {
            keep.push_back(t);
        }
    }
    if (timed_out.empty() && given_up.empty()) return;
    p.pending = std::move(keep);
    const std::string why = "no MPI rank can run it: every rank serving its pool stopped "
                            "answering (for " + seconds(now - p.no_rank_since) + ")";
    for (auto* t : timed_out) {
        fail_task(*t, std::make_exception_ptr(task_timeout(
                          "task waited past its timeout of " + std::to_string(t->timeout_ns / ms_ns) +
                          " ms: " + why)));
    }
    for (auto* t : given_up) fail_task(*t, std::make_exception_ptr(worker_died(0, -1, why)));
}

void engine::declare_silent(std::size_t server, std::int64_t now) {
    rank_link& s = servers_[server];
    s.silent = true;
    const std::string quiet = seconds(now - s.last_heard_ns);
    std::fprintf(stderr,
                 "procpool: mpi_pool: MPI rank %d on host %s has not answered for %s; its tasks "
                 "fail and it gets no new ones until it answers again\n",
                 s.rank, s.host.c_str(), quiet.c_str());
    std::vector<sent_task> held;
    for (const auto& [id, e] : inflight_) {
        if (e.task->rank == s.rank) held.push_back(e);
    }
    for (const auto& e : held) {
        detail::mpi_task_base& t = *e.task;
        forget_inflight(t);
        // The rank may not have read the task yet: by reference it then opens
        // /proc/<pid>/fd/<fd>, which must still be this task's block (not a descriptor
        // that number names by then). Kept until the rank answers for the task.
        if (!t.attachments.empty()) orphaned_blocks_.emplace(t.id, std::move(t.attachments));
        const std::string why = "its MPI rank stopped answering (nothing from it for " + quiet +
                                ") " + where(s.rank);
        if (t.timeout_ns > 0 && now - e.sent_ns > t.timeout_ns + overdue_grace) {
            fail_task(t, std::make_exception_ptr(task_timeout(
                             "task ran past its timeout of " + std::to_string(t.timeout_ns / ms_ns) +
                             " ms and " + why)));
        } else {
            fail_task(t, std::make_exception_ptr(worker_died(0, -1, why)));
        }
    }
    // Whatever waits for its answer goes on without it.
    for (auto it = opening_.begin(); it != opening_.end();) {
        auto& w = it->second.waiting;
        auto at = std::find(w.begin(), w.end(), s.rank);
        if (at == w.end()) {
            ++it;
            continue;
        }
        w.erase(at);
        if (!w.empty()) {
            ++it;
            continue;
        }
        auto done = it++;
        finish_open(done);
    }
    for (auto it = cancelling_.begin(); it != cancelling_.end();) {
        auto& w = it->waiting;
        w.erase(std::remove(w.begin(), w.end(), s.rank), w.end());
        if (!w.empty()) {
            ++it;
            continue;
        }
        if (it->done) it->done->set_value();
        it = cancelling_.erase(it);
    }
}

// Tells every serving rank to exit. A silent one must answer first: MPI_Finalize waits
// for every rank, so a rank that stays frozen would hang the job at exit; the job is
// aborted instead, naming it.
void engine::stop_ranks() {
    // Every rank must answer first: MPI_Finalize waits for every rank, so one that stays
    // frozen would hang the job at exit; the job is aborted instead, naming it. A silent
    // rank has `stop_wait` to answer; any other (it may have stopped while it held
    // nothing, so it was never pinged) `silent_any`. The others are told to stop only
    // after all answered: an abort while some rank already waits in MPI_Finalize can hang
    // mpirun itself (Open MPI 4.1: its PMIx server's finalize deadlocks; seen 1 in ~5).
    const std::int64_t now = trace::clock_ns();
    std::vector<std::int64_t> deadline(servers_.size(), 0);  // 0: answered (or lost)
    for (std::size_t i = 0; i < servers_.size(); ++i) {
        rank_link& s = servers_[i];
        if (s.lost) continue;
        deadline[i] = now + (s.silent ? stop_wait : silent_any);
        if (s.ping_sent_ns == 0 || !s.silent) c_.send(s.rank, tag_ping, {});
    }
    message m;
    for (;;) {
        c_.progress_sends();
        while (c_.try_receive(MPI_ANY_SOURCE, m)) {
            heard_from(m.source, trace::clock_ns());
            if (m.source >= 1 && static_cast<std::size_t>(m.source) <= servers_.size()) {
                deadline[server_index(m.source)] = 0;
            }
        }
        const std::int64_t t = trace::clock_ns();
        bool still = false, late = false;
        for (std::size_t i = 0; i < servers_.size(); ++i) {
            if (deadline[i] == 0 || servers_[i].lost) continue;
            still = true;
            late = late || t > deadline[i];
        }
        if (!still) break;
        if (late) {
            for (std::size_t i = 0; i < servers_.size(); ++i) {
                const rank_link& s = servers_[i];
                if (deadline[i] == 0 || s.lost || t <= deadline[i]) continue;
                std::fprintf(stderr,
                             "procpool: mpi_pool: MPI rank %d on host %s stopped answering "
                             "and did not answer at exit either; ending the MPI job "
                             "(MPI_Abort), which would otherwise wait for it forever\n",
                             s.rank, s.host.c_str());
                // On this node (its /proc was readable at start-up: same pid namespace)
                // it is killed first: the job's end then does not depend on how the
                // launcher treats a stopped process.
                if (s.same_node && s.pid > 1) kill(static_cast<pid_t>(s.pid), SIGKILL);
            }
            std::fflush(stderr);
            MPI_Abort(c_.get(), 1);
        }
        const timespec pause{0, 200'000};
        nanosleep(&pause, nullptr);
    }
    for (const auto& s : servers_) {
        if (!s.lost) c_.send(s.rank, tag_stop, {});
    }
    c_.flush();
}

void engine::loop() {
    backoff idle;
    message m;
    for (;;) {
        bool did = false;
        if (take_inbox()) {
            did = true;
            for (auto& o : work_.opens) {
                const std::uint32_t id = o.msg.pool;
                o.waiting.clear();
                const std::vector<std::byte> body = encode(o.msg);
                if (body.size() > max_message_bytes) {
                    // comm::send would throw here, on the MPI thread: fail the constructor.
                    o.done->set_exception(std::make_exception_ptr(serialization_error(
                        "mpi_pool: the pool's options (initializer arguments, environment) "
                        "take " + std::to_string(body.size()) +
                        " bytes; one MPI message carries at most 2 GiB")));
                    continue;
                }
                for (const auto& s : servers_) {
                    if (s.lost || s.silent) continue;
                    c_.send(s.rank, tag_open, body);
                    o.waiting.push_back(s.rank);
                }
                if (o.waiting.empty()) {
                    o.done->set_exception(std::make_exception_ptr(
                        error("mpi_pool: no MPI rank is left to serve it")));
                    continue;
                }
                opening_.emplace(id, std::move(o));
            }
            const std::int64_t queued = work_.tasks.empty() ? 0 : trace::clock_ns();
            for (auto [t, pool] : work_.tasks) {
                t->queued_ns = queued;
                auto it = pools_.find(pool);
                if (it == pools_.end()) {
                    fail_task(*t, std::make_exception_ptr(pool_shut_down("mpi_pool: closed")));
                    continue;
                }
                it->second.pending.push_back(t);
            }
            std::unordered_set<std::uint64_t> queued_cancels;
            for (auto id : work_.cancels) {
                if (auto it = inflight_.find(id); it != inflight_.end()) {
                    c_.send(it->second.task->rank, tag_cancel, encode_u64(id));
                    continue;
                }
                queued_cancels.insert(id);  // still on rank 0, or resolved and gone
            }
            std::unordered_set<std::uint64_t> queued_pending_cancels;
            for (auto id : work_.cancels_pending) {
                if (auto it = inflight_.find(id); it != inflight_.end()) {
                    c_.send(it->second.task->rank, tag_cancel_task_pending, encode_u64(id));
                    continue;
                }
                queued_pending_cancels.insert(id);
            }
            drop_queued(queued_cancels, false);
            drop_queued(queued_pending_cancels, true);
            for (auto& r : work_.cancel_pools) {
                auto it = pools_.find(r.pool);
                if (it != pools_.end()) {
                    auto pending = std::move(it->second.pending);
                    it->second.pending.clear();
                    for (auto* t : pending) {
                        if (t->begin_resolve()) {
                            t->shared().set_cancelled("task cancelled: its pool shut down");
                        }
                        owner(*t).release_task(*t);
                    }
                    // The tasks sent ahead and not started yet: each rank cancels them.
                    for (const auto& s : servers_) {
                        if (s.lost) continue;
                        c_.send(s.rank, tag_cancel_pending, encode_u64(r.pool));
                        // A silent rank holds none of its tasks: no need to wait for it.
                        if (!s.silent) r.waiting.push_back(s.rank);
                    }
                }
                if (r.waiting.empty()) {
                    if (r.done) r.done->set_value();
                    continue;
                }
                cancelling_.push_back(std::move(r));
            }
            for (auto pool : work_.closes) {
                pools_.erase(pool);
                for (const auto& s : servers_) {
                    if (!s.lost) c_.send(s.rank, tag_close, encode_u64(pool));
                }
            }
            if (work_.stop) stopping_ = true;
            work_ = inbox{};
        }
        for (auto& [id, p] : pools_) dispatch(p);
        while (c_.try_receive(MPI_ANY_SOURCE, m)) {
            did = true;
            heard_from(m.source, trace::clock_ns());
            on_message(m);
        }
        check_liveness(trace::clock_ns());
        for (auto& [id, p] : pools_) dispatch(p);
        did = c_.progress_sends() || did;
        if (stopping_ && inflight_.empty() && opening_.empty() && cancelling_.empty()) {
            fail_pending("mpi_pool: MPI was finalized (mpi_finalize) before this task could "
                         "be sent to a rank");
            break;
        }
        if (did) {
            idle.reset();
            continue;
        }
        const bool expecting = !inflight_.empty() || !opening_.empty() || !cancelling_.empty() ||
                               c_.sends_in_flight() != 0;
        if (expecting) {
            idle.pause(true);
            continue;
        }
        // Nothing in flight: a program that waits for each result submits the next one
        // right away, so spin a little before paying for a sleep and a wake-up.
        if (idle.spin_once()) continue;
        // A silent rank is watched for its answer (and the tasks that wait for it).
        if (std::any_of(servers_.begin(), servers_.end(),
                        [](const rank_link& r) { return r.silent && !r.lost; })) {
            idle.pause(false);
            continue;
        }
        // Nothing in flight anywhere: sleep until a thread posts work.
        std::unique_lock lock(mu_);
        sleeping_ = true;
        cv_.wait(lock, [this] { return !in_.empty(); });
        sleeping_ = false;
    }
    stop_ranks();
}

}  // namespace procpool::mpi_impl
