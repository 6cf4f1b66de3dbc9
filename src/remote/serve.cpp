// The worker's loop: initializer, ready report, then request -> invoke -> reply.
#include "remote/serve.hpp"

#include <string>
#include <utility>

#include "procpool/detail/remote_call.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/wire.hpp"

namespace procpool::remote {

namespace {

detail::invoker_fn invoker_at(std::uint64_t off) noexcept {
    return reinterpret_cast<detail::invoker_fn>(const_cast<void*>(detail::code_address(off)));
}

// Runs the initializer; false (after replying init_failed) if it failed.
bool run_initializer(worker_transport& t, const worker_config& cfg, std::vector<std::byte>& out) {
    wire::reader in(cfg.init_args.data(), cfg.init_args.size());
    out.clear();
    wire::writer w(out);
    const run_status st = invoker_at(cfg.init_invoker)(cfg.init_fn, in, w);
    if (st == run_status::value) return true;
    if (st == run_status::serialization) {
        // Reported with the same shape as an exception: (type name, message).
        wire::reader rin(out.data(), out.size());
        const std::string text = detail::decode_message(rin);
        std::vector<std::byte> msg;
        wire::writer mw(msg);
        detail::encode_message(mw, "procpool::serialization_error");
        detail::encode_message(mw, text);
        out = std::move(msg);
    }
    t.reply(0, run_status::init_failed, 0, 0, out);
    return false;
}

// Runs one task request and replies.
void run_task(worker_transport& t, request& r, std::vector<std::byte>& out) {
    // Two clock reads per task: its start (also what begin() publishes) and its end.
    const std::int64_t start = now_ns();
    r.start_ns = start;
    out.clear();
    run_status st = run_status::cancelled;
    if (t.begin(r)) {
        detail::attachment_scope scope(t.attachments());
        wire::writer w(out);
        if (!r.failure.empty()) {
            detail::encode_message(w, r.failure);
            st = run_status::serialization;
        } else {
            wire::reader in(r.args, r.args_len);
            st = invoker_at(r.task.invoker)(r.task.fn, in, w);
        }
    }
    t.release();
    const std::int64_t end = now_ns();
    t.reply(r.task.seq, st, end - start, end, out);
}

}  // namespace

serve_end serve(worker_transport& t, const worker_config& cfg) {
    std::vector<std::byte> out;
    if (cfg.init_invoker != 0) {
        t.phase(serve_phase::initializer);
        if (!run_initializer(t, cfg, out)) return serve_end::initializer_failed;
    }
    t.phase(serve_phase::serving);
    // Tells the parent, before any task can run, that start-up is over: from then on a
    // death is a task's doing, not a failed start (the parent keeps that fact itself).
    out.clear();
    t.reply(0, run_status::ready, 0, 0, out);
    std::int32_t done = 0;
    for (;;) {
        request r = t.next();
        if (r.kind != msg_task) {
            t.release();
            return serve_end::exit_requested;
        }
        run_task(t, r, out);
        if (cfg.max_tasks > 0 && ++done >= cfg.max_tasks) return serve_end::max_tasks;
    }
}

}  // namespace procpool::remote
