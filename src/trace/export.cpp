// trace_recorder's exports: Chrome's trace event format (JSON, every value serialized by
// nlohmann-json) and a self-contained SVG timeline; save_* write either atomically.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <ostream>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "procpool/error.hpp"
#include "procpool/trace.hpp"

namespace procpool {
namespace {

// ---- what both exports share ---------------------------------------------------------------

/// A consistent copy of a recorder's contents, taken under its lock.
struct snapshot {
    std::vector<pool_trace_info> pools;
    std::vector<task_trace> tasks;
    std::vector<worker_trace> workers;
};

/// Copies what `pools`, `tasks` and `workers` hold under `m`.
snapshot copy_under(std::mutex& m, const std::vector<pool_trace_info>& pools,
                    const std::vector<task_trace>& tasks,
                    const std::vector<worker_trace>& workers) {
    std::lock_guard lock(m);
    return {pools, tasks, workers};
}

/// `a - b` without signed overflow (absurd inputs wrap instead of being undefined).
std::int64_t diff_ns(std::int64_t a, std::int64_t b) noexcept {
    return static_cast<std::int64_t>(static_cast<std::uint64_t>(a) - static_cast<std::uint64_t>(b));
}

/// The lane a task is drawn on: its worker if it started, -1 (the pool's queue lane) if it
/// never did (or started on no known worker).
int lane_worker(const task_trace& t) noexcept {
    return t.start_ns != 0 && t.worker >= 0 ? t.worker : -1;
}
int lane_worker(const worker_trace& w) noexcept { return w.worker >= 0 ? w.worker : -1; }

/// A lane's "tid" in the Chrome export: worker + 1 (0 for the queue lane), in 64 bits so
/// that a recorded worker number of INT_MAX does not overflow.
std::int64_t chrome_tid(int worker) noexcept { return std::int64_t{worker} + 1; }

/// A task's end, never before its start.
std::int64_t end_of(const task_trace& t) noexcept {
    return t.start_ns != 0 ? std::max(t.end_ns, t.start_ns) : t.end_ns;
}

/// One (pool, worker) lane; worker -1 is the pool's queue lane.
struct lane_key {
    std::uint32_t pool = 0;
    int worker = -1;
    auto operator<=>(const lane_key&) const = default;
};

/// What a lane's label needs: the process id seen last on it.
struct lane_info {
    int pid = 0;
    std::int64_t pid_time = std::numeric_limits<std::int64_t>::min();
};

/// Every lane that appears in tasks or worker events, sorted by pool then worker.
std::map<lane_key, lane_info> lanes_of(const snapshot& s) {
    std::map<lane_key, lane_info> lanes;
    const auto seen = [&](lane_key k, int pid, std::int64_t when) {
        lane_info& l = lanes[k];
        if (k.worker >= 0 && pid != 0 && when >= l.pid_time) {
            l.pid = pid;
            l.pid_time = when;
        }
    };
    for (const task_trace& t : s.tasks) seen({t.pool, lane_worker(t)}, t.pid, t.start_ns);
    for (const worker_trace& w : s.workers) seen({w.pool, lane_worker(w)}, w.pid, w.time_ns);
    return lanes;
}

/// The pool's name as exports show it ("pool N" for an index never registered).
std::string pool_name(const snapshot& s, std::uint32_t pool) {
    if (pool < s.pools.size()) return s.pools[pool].name;
    return "pool " + std::to_string(pool + 1);
}

/// Severity for merged bars: the colour of a group is that of its worst status.
int severity(task_status st) noexcept {
    switch (st) {
        case task_status::ok: return 0;
        case task_status::cancelled: return 1;
        case task_status::exception: return 2;
        case task_status::timeout: return 3;
        case task_status::failed: return 4;
        case task_status::worker_died: return 5;
    }
    return 4;
}

constexpr std::array<task_status, 6> all_statuses{
    task_status::ok,      task_status::exception, task_status::worker_died,
    task_status::timeout, task_status::cancelled, task_status::failed,
};

std::size_t status_index(task_status st) noexcept {
    for (std::size_t i = 0; i < all_statuses.size(); ++i)
        if (all_statuses[i] == st) return i;
    return all_statuses.size() - 1;
}

const char* colour(task_status st) noexcept {
    switch (st) {
        case task_status::ok: return "#4caf50";
        case task_status::exception: return "#f59e0b";
        case task_status::worker_died: return "#dc2626";
        case task_status::timeout: return "#8e44ad";
        case task_status::cancelled: return "#9e9e9e";
        case task_status::failed: return "#7f1d1d";
    }
    return "#7f1d1d";
}

// ---- Chrome trace event format -----------------------------------------------------------

using ojson = nlohmann::ordered_json;

/// Invalid UTF-8 (task errors may hold anything) becomes U+FFFD instead of a throw.
std::string dump(const ojson& j) {
    return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

/// The earliest timestamp of the trace (0 if it holds none): the zero of both exports' time.
std::int64_t origin_of(const snapshot& s) {
    bool any = false;
    std::int64_t o = 0;
    const auto see = [&](std::int64_t t) {
        if (!any || t < o) o = t;
        any = true;
    };
    for (const task_trace& t : s.tasks) {
        if (t.submit_ns != 0) see(t.submit_ns);
        if (t.start_ns != 0) see(t.start_ns);
        see(end_of(t));
    }
    for (const worker_trace& w : s.workers) see(w.time_ns);
    return o;
}

std::string render_chrome_json(const snapshot& s) {
    const std::int64_t origin = origin_of(s);
    const auto us = [origin](std::int64_t ns) {
        return static_cast<double>(diff_ns(ns, origin)) / 1000.0;
    };
    const auto lanes = lanes_of(s);

    // Built one event at a time (no document of the whole trace in memory), one event per
    // line; every value, and so all escaping, is nlohmann-json's.
    std::string out = "{\"traceEvents\":[\n";
    bool first = true;
    const auto emit = [&](const ojson& ev) {
        if (!first) out += ",\n";
        first = false;
        out += dump(ev);
    };

    std::set<std::uint32_t> pools;
    for (std::uint32_t i = 0; i < s.pools.size(); ++i) pools.insert(i);
    for (const auto& [k, l] : lanes) pools.insert(k.pool);
    for (std::uint32_t p : pools) {
        std::string name = pool_name(s, p);
        if (p < s.pools.size() && !s.pools[p].host.empty()) name += " on " + s.pools[p].host;
        emit({{"ph", "M"}, {"name", "process_name"}, {"pid", std::uint64_t{p} + 1}, {"tid", 0},
              {"args", {{"name", name}}}});
    }
    for (const auto& [k, l] : lanes) {
        std::string name = "queue";
        if (k.worker >= 0) {
            name = "worker " + std::to_string(k.worker);
            if (l.pid != 0) name += " (pid " + std::to_string(l.pid) + ")";
        }
        emit({{"ph", "M"}, {"name", "thread_name"}, {"pid", std::uint64_t{k.pool} + 1},
              {"tid", chrome_tid(k.worker)}, {"args", {{"name", name}}}});
    }

    for (const task_trace& t : s.tasks) {
        const bool started = t.start_ns != 0;
        ojson args = {{"id", t.id},
                      {"status", to_string(t.status)},
                      {"attempt", t.attempt},
                      {"bytes_in", t.bytes_in},
                      {"bytes_out", t.bytes_out}};
        if (!t.error.empty()) args["error"] = t.error;
        const std::int64_t left_queue = started ? t.start_ns : t.end_ns;
        if (t.submit_ns != 0 && left_queue >= t.submit_ns)
            args["queue_wait_us"] = static_cast<double>(diff_ns(left_queue, t.submit_ns)) / 1000.0;
        ojson ev = {{"ph", started ? "X" : "i"},
                    {"name", "task " + std::to_string(t.id)},
                    {"cat", to_string(t.status)},
                    {"ts", us(started ? t.start_ns : t.end_ns)}};
        if (started)
            ev["dur"] = static_cast<double>(diff_ns(end_of(t), t.start_ns)) / 1000.0;
        else
            ev["s"] = "t";
        ev["pid"] = std::uint64_t{t.pool} + 1;
        ev["tid"] = chrome_tid(lane_worker(t));
        ev["args"] = std::move(args);
        emit(ev);
    }

    for (const worker_trace& w : s.workers) {
        std::string name = "worker started";
        if (w.what == worker_trace::kind::exited) {
            name = "worker exited";
            if (!w.reason.empty()) name += ": " + w.reason;
        }
        ojson args = {{"pid", w.pid}};
        if (!w.reason.empty()) args["reason"] = w.reason;
        emit({{"ph", "i"}, {"s", "t"}, {"name", name}, {"cat", "worker"}, {"ts", us(w.time_ns)},
              {"pid", std::uint64_t{w.pool} + 1}, {"tid", chrome_tid(lane_worker(w))},
              {"args", args}});
    }

    out += "\n],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":";
    out += dump({{"generator", "procpool trace_recorder"},
                 {"clock", "steady_clock (CLOCK_MONOTONIC)"},
                 {"origin_ns", origin},
                 {"tasks", s.tasks.size()},
                 {"worker_events", s.workers.size()}});
    out += "}\n";
    return out;
}

// ---- SVG ------------------------------------------------------------------------------------

/// Decodes the UTF-8 sequence at `s[i]`: returns its length and its code point, or, for an
/// invalid sequence, the length of its longest valid-looking prefix (at least 1) and U+FFFD.
std::size_t decode_utf8(std::string_view s, std::size_t i, char32_t& cp, bool& valid) {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = byte(i);
    valid = true;
    if (c < 0x80) {
        cp = c;
        return 1;
    }
    std::size_t need = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
        cp = c & 0x1Fu;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        cp = c & 0x0Fu;
        if (c == 0xE0) lo = 0xA0;  // overlong
        if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        cp = c & 0x07u;
        if (c == 0xF0) lo = 0x90;  // overlong
        if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
        valid = false;
        cp = 0xFFFD;
        return 1;
    }
    std::size_t k = 1;
    for (; k <= need && i + k < s.size(); ++k) {
        const unsigned char d = byte(i + k);
        if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) break;
        cp = (cp << 6) | (d & 0x3Fu);
    }
    if (k <= need) {
        valid = false;
        cp = 0xFFFD;
        return k;
    }
    return need + 1;
}

/// The SVG's one escaping function: `s` as XML character data. Escapes & < > " ', drops
/// control characters (C0 other than \t \n \r, DEL, C1) and U+FFFE/U+FFFF, which XML cannot
/// hold, replaces invalid UTF-8 with U+FFFD, and cuts the text after `max_chars` characters
/// with an ellipsis.
std::string xml_text(std::string_view s,
                     std::size_t max_chars = std::numeric_limits<std::size_t>::max()) {
    std::string out;
    out.reserve(s.size());
    std::size_t chars = 0;
    for (std::size_t i = 0; i < s.size();) {
        char32_t cp = 0;
        bool valid = true;
        const std::size_t len = decode_utf8(s, i, cp, valid);
        const std::string_view raw = s.substr(i, len);
        i += len;
        if ((cp < 0x20 && cp != U'\t' && cp != U'\n' && cp != U'\r') ||
            (cp >= 0x7F && cp <= 0x9F) || cp == 0xFFFE || cp == 0xFFFF)
            continue;
        if (chars == max_chars) {
            out += "\u2026";
            break;
        }
        ++chars;
        switch (cp) {
            case U'&': out += "&amp;"; break;
            case U'<': out += "&lt;"; break;
            case U'>': out += "&gt;"; break;
            case U'"': out += "&quot;"; break;
            case U'\'': out += "&apos;"; break;
            default:
                if (valid)
                    out += raw;
                else
                    out += "\uFFFD";
        }
    }
    return out;
}

/// Characters in `s` (UTF-8 lead bytes), for width estimates.
std::size_t chars_in(std::string_view s) noexcept {
    return static_cast<std::size_t>(std::count_if(s.begin(), s.end(), [](char c) {
        return (static_cast<unsigned char>(c) & 0xC0u) != 0x80u;
    }));
}

/// `v` with `decimals` fixed decimals, locale-independent.
std::string fixed(double v, int decimals) {
    if (!std::isfinite(v)) v = 0;
    std::array<char, 64> buf{};
    auto r = std::to_chars(buf.data(), buf.data() + buf.size(), v, std::chars_format::fixed,
                           decimals);
    std::string s(buf.data(), r.ptr);
    if (s.find_first_not_of("-0.") == std::string::npos) s.erase(0, s[0] == '-' ? 1 : 0);  // -0
    return s;
}

/// A coordinate: at most two decimals, trailing zeros dropped.
std::string num(double v) {
    std::string s = fixed(v, 2);
    if (s.find('.') != std::string::npos) {
        while (s.back() == '0') s.pop_back();
        if (s.back() == '.') s.pop_back();
    }
    return s;
}

/// A duration in ms with three decimals: "1.234 ms".
std::string ms(std::int64_t ns) { return fixed(static_cast<double>(ns) / 1e6, 3) + " ms"; }

/// The nice tick step (1, 2 or 5 times a power of ten ns) for `span_ns` (at least 10 us):
/// the smallest that gives at most 10 ticks, which then gives at least 5.
std::int64_t tick_step(std::int64_t span_ns) {
    for (std::int64_t p = 1;; p *= 10) {
        for (std::int64_t m : {1, 2, 5})
            if (span_ns / (m * p) <= 9) return m * p;
        if (p > std::numeric_limits<std::int64_t>::max() / 100) return p * 10;
    }
}

/// A tick label: seconds if the axis spans a second or more, milliseconds below, with as
/// many decimals as the step needs.
std::string tick_label(std::int64_t value_ns, std::int64_t step_ns, std::int64_t span_ns) {
    int digits = 0;  // step_ns = m * 10^digits
    for (std::int64_t p = step_ns; p >= 10 && p % 10 == 0; p /= 10) ++digits;
    if (span_ns >= 1'000'000'000)
        return fixed(static_cast<double>(value_ns) / 1e9, std::max(0, 9 - digits)) + " s";
    return fixed(static_cast<double>(value_ns) / 1e6, std::max(0, 6 - digits)) + " ms";
}

/// Longest error text a tooltip shows (the JSON export keeps all of it).
constexpr std::size_t max_error_chars = 300;
/// Merged bars are at most this wide, so a failure colours only its neighbourhood.
constexpr double max_merge_px = 8;
/// Estimated advance of one character of the 11 px sans-serif text.
constexpr double char_w = 6.2;

class svg_builder {
public:
    svg_builder(const snapshot& s, const svg_options& o) : s_(s), o_(o) {
        width_ = std::max(o.width, 320);
        lane_h_ = std::max(o.lane_height, 8);
    }

    std::string render() {
        const auto lanes = lanes_of(s_);
        if (lanes.empty()) return render_empty();
        layout(lanes);
        header();
        grid();
        std::size_t row = 0;
        std::uint32_t prev_pool = lanes.begin()->first.pool;
        for (const auto& [k, info] : lanes) {
            if (k.pool != prev_pool) {
                const double y = lanes_top_ + static_cast<double>(row) * lane_h_;
                out_ += "<line class=\"pool-separator\" x1=\"" + num(pad) + "\" y1=\"" + num(y) +
                        "\" x2=\"" + num(plot_x1_) + "\" y2=\"" + num(y) +
                        "\" stroke=\"#666666\" stroke-width=\"1\"/>\n";
                prev_pool = k.pool;
            }
            lane(k, info, row++);
        }
        if (s_.tasks.empty()) {
            out_ += "<text class=\"empty\" x=\"" + num((plot_x0_ + plot_x1_) / 2) + "\" y=\"" +
                    num(lanes_top_ + static_cast<double>(lanes.size()) * lane_h_ / 2 + 4) +
                    "\" text-anchor=\"middle\" fill=\"#555555\">no tasks recorded</text>\n";
        }
        axis();
        legend();
        out_ += "</svg>\n";
        return std::move(out_);
    }

private:
    static constexpr double pad = 8;

    const snapshot& s_;
    const svg_options& o_;
    std::string out_;
    int width_ = 0;
    int lane_h_ = 0;
    double title_h_ = 0;
    double label_w_ = 0;
    double plot_x0_ = 0, plot_x1_ = 0;
    double lanes_top_ = 0, lanes_bottom_ = 0;
    double legend_top_ = 0;
    std::size_t legend_rows_ = 1;
    double height_ = 0;
    std::int64_t t0_ = 0, span_ = 1;
    std::size_t merged_groups_ = 0;
    std::vector<std::string> pool_labels_;

    /// The axis's tick values 0, step, 2 step, ... up to span_. Computed as k * step, not
    /// by adding step, which would overflow past the last tick of a span near int64's
    /// range (span_ / step is at most 9, see tick_step).
    std::vector<std::int64_t> ticks(std::int64_t step) const {
        std::vector<std::int64_t> v;
        for (std::int64_t k = 0; k <= span_ / step; ++k) v.push_back(k * step);
        return v;
    }

    double x_of(std::int64_t t) const { return x_at(diff_ns(t, t0_)); }
    /// The x of `offset` ns after the axis's start (ticks: t0_ + offset may overflow
    /// when the trace ends near the clock's limit, as the axis spans at least 10 us).
    double x_at(std::int64_t offset) const {
        return plot_x0_ + static_cast<double>(offset) / static_cast<double>(span_) *
                              (plot_x1_ - plot_x0_);
    }

    std::string label_of(lane_key k, const lane_info& info) const {
        std::string l = k.pool < pool_labels_.size() ? pool_labels_[k.pool] : pool_name(s_, k.pool);
        if (k.worker < 0) return l + " / queue";
        l += " / w" + std::to_string(k.worker);
        if (info.pid != 0) l += " (" + std::to_string(info.pid) + ")";
        return l;
    }

    void layout(const std::map<lane_key, lane_info>& lanes) {
        // Pools that share a name are told apart by their number.
        std::map<std::string, int> names;
        for (const auto& p : s_.pools) ++names[p.name];
        for (std::size_t i = 0; i < s_.pools.size(); ++i) {
            std::string n = s_.pools[i].name;
            if (names[n] > 1) n += " #" + std::to_string(i + 1);
            pool_labels_.push_back(std::move(n));
        }

        // The time span: from the trace's earliest timestamp (as in the JSON export) to its
        // latest.
        std::int64_t hi = origin_of(s_);
        for (const task_trace& t : s_.tasks) hi = std::max(hi, end_of(t));
        for (const worker_trace& w : s_.workers) hi = std::max(hi, w.time_ns);
        t0_ = origin_of(s_);
        span_ = std::max<std::int64_t>(diff_ns(hi, t0_), 10'000);

        std::size_t longest = 0;
        for (const auto& [k, info] : lanes)
            longest = std::max(longest, chars_in(label_of(k, info)));
        label_w_ = std::clamp(static_cast<double>(longest) * char_w + 12, 80.0, width_ * 0.35);
        title_h_ = o_.title.empty() ? 0 : 24;
        lanes_top_ = pad + title_h_;
        lanes_bottom_ = lanes_top_ + static_cast<double>(lanes.size()) * lane_h_;
        plot_x0_ = pad + label_w_;
        plot_x1_ = width_ - 28.0;  // room for the last tick's label
        legend_top_ = lanes_bottom_ + 24;
        legend_rows_ = legend_items(false);
        height_ = legend_top_ + static_cast<double>(legend_rows_) * 16 + pad;
    }

    void header() {
        const std::string w = std::to_string(width_), h = num(std::ceil(height_));
        out_ += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
        out_ += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + w + "\" height=\"" + h +
                "\" viewBox=\"0 0 " + w + " " + h +
                "\" font-family=\"sans-serif\" font-size=\"11\">\n";
        out_ += "<rect class=\"background\" width=\"" + w + "\" height=\"" + h +
                "\" fill=\"#ffffff\"/>\n";
        if (!o_.title.empty())
            out_ += "<text class=\"title\" x=\"" + num(pad) + "\" y=\"" + num(pad + 15) +
                    "\" font-size=\"15\" font-weight=\"bold\">" + xml_text(o_.title) + "</text>\n";
    }

    std::string render_empty() {
        title_h_ = o_.title.empty() ? 0 : 24;
        height_ = pad + title_h_ + 40 + pad;
        header();
        out_ += "<text class=\"empty\" x=\"" + num(width_ / 2.0) + "\" y=\"" +
                num(pad + title_h_ + 24) +
                "\" text-anchor=\"middle\" fill=\"#555555\">no tasks recorded</text>\n</svg>\n";
        return std::move(out_);
    }

    void grid() {
        const std::int64_t step = tick_step(span_);
        out_ += "<g class=\"grid\" stroke=\"#e4e4e4\" stroke-width=\"1\">\n";
        for (const std::int64_t v : ticks(step)) {
            const std::string x = num(x_at(v));
            out_ += "<line x1=\"" + x + "\" y1=\"" + num(lanes_top_) + "\" x2=\"" + x + "\" y2=\"" +
                    num(lanes_bottom_) + "\"/>\n";
        }
        out_ += "</g>\n";
    }

    /// A bar; `title` is already escaped.
    void rect(const char* cls, double x, double w, double y, double h, const char* fill,
              const std::string& title) {
        out_ += "<rect class=\"";
        out_ += cls;
        out_ += "\" x=\"" + num(x) + "\" y=\"" + num(y) + "\" width=\"" + num(w) + "\" height=\"" +
                num(h) + "\" fill=\"" + fill + "\"";
        // A thin white edge keeps neighbouring bars of one lane apart; not on narrow bars,
        // which it would wash out.
        if (w >= 3) out_ += " stroke=\"#ffffff\" stroke-width=\"0.75\"";
        out_ += "><title>" + title + "</title></rect>\n";
    }

    /// A task's tooltip, escaped: "task <id> · <status> · <duration> · attempt N · <error>".
    static std::string task_title(const task_trace& t) {
        std::string s = "task " + std::to_string(t.id) + " \u00b7 " + to_string(t.status) +
                        " \u00b7 ";
        s += t.start_ns != 0 ? ms(diff_ns(end_of(t), t.start_ns)) : std::string("never started");
        s += " \u00b7 attempt " + std::to_string(t.attempt);
        std::string escaped = xml_text(s);
        if (!t.error.empty()) escaped += " \u00b7 " + xml_text(t.error, max_error_chars);
        return escaped;
    }

    void lane(lane_key k, const lane_info& info, std::size_t row) {
        const double top = lanes_top_ + static_cast<double>(row) * lane_h_;
        const double bar_y = top + 2, bar_h = std::max(1, lane_h_ - 4);
        out_ += "<g class=\"lane\" data-pool=\"" + std::to_string(k.pool) + "\" data-worker=\"" +
                std::to_string(k.worker) + "\">\n";
        out_ += "<rect class=\"lane-bg\" x=\"" + num(pad) + "\" y=\"" + num(top) + "\" width=\"" +
                num(plot_x1_ - pad) + "\" height=\"" + std::to_string(lane_h_) + "\" fill=\"" +
                (row % 2 == 0 ? "#f6f6f6" : "#ffffff") + "\" fill-opacity=\"0.6\"/>\n";

        // The label, cut to the label column (the whole of it as a tooltip if cut).
        const int font = std::clamp(lane_h_ - 5, 6, 11);
        const std::string label = label_of(k, info);
        const auto fit = static_cast<std::size_t>(
            std::max(4.0, (label_w_ - 10) / (char_w * font / 11.0)));
        out_ += "<text class=\"lane-label\" x=\"" + num(pad + 3) + "\" y=\"" +
                num(top + lane_h_ / 2.0 + font * 0.35) + "\" font-size=\"" + std::to_string(font) +
                "\">" + xml_text(label, fit);
        if (chars_in(label) > fit) out_ += "<title>" + xml_text(label) + "</title>";
        out_ += "</text>\n";

        // The lane's tasks by start (a task that never started: at its end), then record order.
        struct item {
            std::int64_t at, end;
            std::size_t index;
        };
        std::vector<item> items;
        for (std::size_t i = 0; i < s_.tasks.size(); ++i) {
            const task_trace& t = s_.tasks[i];
            if (t.pool != k.pool || lane_worker(t) != k.worker) continue;
            const std::int64_t e = end_of(t);
            items.push_back({t.start_ns != 0 ? t.start_ns : e, e, i});
        }
        std::sort(items.begin(), items.end(), [](const item& a, const item& b) {
            return std::tie(a.at, a.end, a.index) < std::tie(b.at, b.end, b.index);
        });

        // Bars narrower than a pixel are merged while they follow each other within a pixel,
        // into blocks of at most max_merge_px; a failed task's bar is drawn on top of its
        // block, at least a pixel wide.
        std::vector<std::size_t> group;
        double gx0 = 0, gx1 = 0;
        const auto single = [&](std::size_t i, double x0, double x1) {
            const task_trace& t = s_.tasks[i];
            rect("task", x0, std::max(1.0, x1 - x0), bar_y, bar_h, colour(t.status),
                 task_title(t));
        };
        const auto flush = [&] {
            if (group.size() == 1) {
                single(group[0], gx0, gx1);
            } else if (group.size() > 1) {
                ++merged_groups_;
                std::array<std::size_t, all_statuses.size()> count{};
                task_status worst = task_status::ok;
                std::int64_t from = std::numeric_limits<std::int64_t>::max();
                std::int64_t to = std::numeric_limits<std::int64_t>::min();
                for (std::size_t i : group) {
                    const task_trace& t = s_.tasks[i];
                    ++count[status_index(t.status)];
                    if (severity(t.status) > severity(worst)) worst = t.status;
                    from = std::min(from, t.start_ns != 0 ? t.start_ns : end_of(t));
                    to = std::max(to, end_of(t));
                }
                const std::size_t failed = group.size() - count[status_index(task_status::ok)];
                std::string title = std::to_string(group.size()) + " tasks, " +
                                    std::to_string(failed) + " failed";
                std::string detail;
                for (std::size_t s = 0; s < all_statuses.size(); ++s) {
                    if (all_statuses[s] == task_status::ok || count[s] == 0) continue;
                    if (!detail.empty()) detail += ", ";
                    detail += std::to_string(count[s]) + " " + to_string(all_statuses[s]);
                }
                if (!detail.empty()) title += " (" + detail + ")";
                title += " \u00b7 " + fixed(static_cast<double>(diff_ns(from, t0_)) / 1e6, 3) +
                         " to " + ms(diff_ns(to, t0_));
                rect("merged", gx0, std::max(1.0, gx1 - gx0), bar_y, bar_h, colour(worst),
                     xml_text(title));
                for (std::size_t i : group) {
                    const task_trace& t = s_.tasks[i];
                    if (t.status == task_status::ok) continue;
                    const double x0 = x_of(t.start_ns != 0 ? t.start_ns : end_of(t));
                    single(i, x0, x_of(end_of(t)));
                }
            }
            group.clear();
        };
        for (const item& it : items) {
            const double x0 = x_of(it.at), x1 = x_of(it.end);
            if (x1 - x0 >= 1.0) {
                flush();
                single(it.index, x0, x1);
                continue;
            }
            if (!group.empty() && (x0 > gx1 + 1.0 || std::max(gx1, x1) - gx0 > max_merge_px))
                flush();
            if (group.empty()) {
                gx0 = x0;
                gx1 = x1;
            }
            gx0 = std::min(gx0, x0);
            gx1 = std::max(gx1, x1);
            group.push_back(it.index);
        }
        flush();

        // Worker exits: a small black triangle at the top of the lane.
        const double th = std::min(7.0, lane_h_ / 2.0);
        for (const worker_trace& w : s_.workers) {
            if (w.what != worker_trace::kind::exited || w.pool != k.pool ||
                lane_worker(w) != k.worker)
                continue;
            const double x = x_of(w.time_ns);
            std::string title = "worker " + std::to_string(w.worker);
            if (w.pid != 0) title += " (pid " + std::to_string(w.pid) + ")";
            title += " exited";
            if (!w.reason.empty()) title += ": " + w.reason;
            title += " \u00b7 at " + ms(diff_ns(w.time_ns, t0_));
            out_ += "<path class=\"worker-exit\" d=\"M" + num(x - th / 2) + " " + num(top) + "h" +
                    num(th) + "l" + num(-th / 2) + " " + num(th) + "z\" fill=\"#000000\"><title>" +
                    xml_text(title) + "</title></path>\n";
        }
        out_ += "</g>\n";
    }

    void axis() {
        const std::int64_t step = tick_step(span_);
        const std::string y = num(lanes_bottom_);
        out_ += "<g class=\"axis\" stroke=\"#333333\" stroke-width=\"1\">\n";
        out_ += "<line x1=\"" + num(plot_x0_) + "\" y1=\"" + y + "\" x2=\"" + num(plot_x1_) +
                "\" y2=\"" + y + "\"/>\n";
        for (const std::int64_t v : ticks(step)) {
            const std::string x = num(x_at(v));
            out_ += "<line x1=\"" + x + "\" y1=\"" + y + "\" x2=\"" + x + "\" y2=\"" +
                    num(lanes_bottom_ + 4) + "\"/>\n";
        }
        out_ += "</g>\n<g class=\"axis-labels\" text-anchor=\"middle\" fill=\"#333333\">\n";
        for (const std::int64_t v : ticks(step))
            out_ += "<text class=\"tick\" x=\"" + num(x_at(v)) + "\" y=\"" +
                    num(lanes_bottom_ + 15) + "\">" + xml_text(tick_label(v, step, span_)) +
                    "</text>\n";
        out_ += "</g>\n";
    }

    /// Lays out (and with `draw`, draws) the legend; returns its number of rows.
    std::size_t legend_items(bool draw) {
        std::array<std::size_t, all_statuses.size()> count{};
        for (const task_trace& t : s_.tasks) ++count[status_index(t.status)];
        double x = pad;
        std::size_t row = 0;
        const auto place = [&](double w) {
            if (x > pad && x + w > width_ - pad) {
                x = pad;
                ++row;
            }
            const double at = x;
            x += w + 14;
            return at;
        };
        const auto y_of = [&](std::size_t r) { return legend_top_ + static_cast<double>(r) * 16; };
        for (std::size_t i = 0; i < all_statuses.size(); ++i) {
            const std::string text =
                std::string(to_string(all_statuses[i])) + " (" + std::to_string(count[i]) + ")";
            const double at = place(14 + static_cast<double>(chars_in(text)) * char_w);
            if (draw)
                out_ += "<rect x=\"" + num(at) + "\" y=\"" + num(y_of(row) - 9) +
                        "\" width=\"10\" height=\"10\" fill=\"" + colour(all_statuses[i]) +
                        "\"/>\n<text x=\"" + num(at + 14) + "\" y=\"" + num(y_of(row)) + "\">" +
                        xml_text(text) + "</text>\n";
        }
        const std::string exit_text = "worker exit";
        double at = place(14 + static_cast<double>(exit_text.size()) * char_w);
        if (draw)
            out_ += "<path d=\"M" + num(at + 1) + " " + num(y_of(row) - 9) + "h8l-4 8z\" " +
                    "fill=\"#000000\"/>\n<text x=\"" + num(at + 14) + "\" y=\"" + num(y_of(row)) +
                    "\">" + xml_text(exit_text) + "</text>\n";
        // Whether bars were merged is known only after drawing the lanes; the note's room is
        // always kept so the layout does not depend on it.
        const std::string note = "bars under 1 px merged";
        at = place(static_cast<double>(note.size()) * char_w);
        if (draw && merged_groups_ > 0)
            out_ += "<text class=\"merge-note\" x=\"" + num(at) + "\" y=\"" + num(y_of(row)) +
                    "\" fill=\"#555555\">" + xml_text(note) + "</text>\n";
        return row + 1;
    }

    void legend() {
        out_ += "<g class=\"legend\">\n";
        legend_items(true);
        out_ += "</g>\n";
    }
};

// ---- files ----------------------------------------------------------------------------------

[[noreturn]] void write_failed(const std::string& path, int err) {
    throw error("procpool: cannot write trace file '" + path + "': " + std::strerror(err));
}

/// Writes `data` to a temporary file next to `path`, then renames it over `path`: a reader
/// sees the old file or the whole new one, never a part.
void write_atomically(const std::string& path, const std::string& data) {
    static std::atomic<unsigned> counter{0};
    const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." +
                            std::to_string(counter.fetch_add(1, std::memory_order_relaxed));
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) write_failed(path, errno);
    const auto fail = [&](int err, bool close_fd) {
        if (close_fd) ::close(fd);
        ::unlink(tmp.c_str());
        write_failed(path, err);
    };
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(errno, true);
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) fail(errno, true);
    if (::close(fd) != 0) fail(errno, false);
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail(errno, false);
}

}  // namespace

void trace_recorder::write_chrome_json(std::ostream& out) const {
    const snapshot s = copy_under(m_, pools_, tasks_, workers_);
    const std::string text = render_chrome_json(s);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
}

void trace_recorder::write_svg(std::ostream& out, const svg_options& opts) const {
    const snapshot s = copy_under(m_, pools_, tasks_, workers_);
    const std::string text = svg_builder(s, opts).render();
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
}

void trace_recorder::save_chrome_json(const std::string& path) const {
    const snapshot s = copy_under(m_, pools_, tasks_, workers_);
    write_atomically(path, render_chrome_json(s));
}

void trace_recorder::save_svg(const std::string& path, const svg_options& opts) const {
    const snapshot s = copy_under(m_, pools_, tasks_, workers_);
    write_atomically(path, svg_builder(s, opts).render());
}

}  // namespace procpool
