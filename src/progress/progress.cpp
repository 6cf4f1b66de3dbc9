#include "procpool/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>

namespace procpool {

namespace {

constexpr int min_bar_width = 10;
constexpr int max_bar_width = 30;

// "m:ss", or "h:mm:ss" from an hour on: short enough to keep the bar on one line.
std::string clock_text(double seconds) {
    const long s = seconds < 0 ? 0 : static_cast<long>(seconds);
    char buf[32];
    if (s >= 3600) {
        std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    } else {
        std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
    }
    return buf;
}

int terminal_columns() {
    winsize ws{};
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
}

}  // namespace

progress_reporter::progress_reporter(std::size_t total, int workers, progress_options opts)
    : opts_(std::move(opts)),
      out_(opts_.out != nullptr ? opts_.out : &std::cerr),
      terminal_(opts_.terminal.value_or((out_ == &std::cerr || out_ == &std::clog) &&
                                        isatty(STDERR_FILENO) == 1)),
      columns_(opts_.columns > 0 ? opts_.columns : (terminal_ ? terminal_columns() : 80)),
      total_(total),
      workers_(workers) {}

progress_reporter::~progress_reporter() {
    try {
        finish();
    } catch (...) {
        // A destructor must not throw; a failed write of the last line is not worth it.
    }
}

std::chrono::steady_clock::time_point progress_reporter::now() const {
    return opts_.clock ? opts_.clock() : std::chrono::steady_clock::now();
}

void progress_reporter::write(const std::string& s) {
    *out_ << s;
    out_->flush();
}

void progress_reporter::start() {
    std::lock_guard lock(m_);
    if (started_) return;
    started_ = true;
    start_ = now();
    if (terminal_) {
        draw_locked(start_);
    } else {
        write(start_line_locked() + '\n');
    }
}

void progress_reporter::task_finished(bool ok) {
    start();
    std::lock_guard lock(m_);
    ++done_;
    if (!ok) ++failed_;
    if (!terminal_ || finished_) return;
    const auto t = now();
    if (t - last_draw_ >= opts_.interval) draw_locked(t);
}

void progress_reporter::tasks_finished(std::size_t n, std::size_t failed) {
    start();
    std::lock_guard lock(m_);
    done_ += n;
    failed_ += std::min(failed, n);
}

void progress_reporter::task_retried() {
    std::lock_guard lock(m_);
    ++retried_;
}

void progress_reporter::refresh() {
    std::lock_guard lock(m_);
    if (!terminal_ || !started_ || finished_) return;
    const auto t = now();
    if (t - last_draw_ >= opts_.interval) draw_locked(t);
}

void progress_reporter::finish() {
    start();
    std::lock_guard lock(m_);
    if (finished_) return;
    finished_ = true;
    if (terminal_) {
        draw_locked(now());
        write("\n");
    } else {
        write(summary_line_locked(now()) + '\n');
    }
}

std::chrono::steady_clock::time_point progress_reporter::next_refresh() const {
    std::lock_guard lock(m_);
    if (!terminal_ || finished_) return std::chrono::steady_clock::time_point::max();
    return last_draw_ + opts_.interval;
}

void progress_reporter::draw_locked(std::chrono::steady_clock::time_point t) {
    last_draw_ = t;
    std::string line = bar_line_locked(t);
    // One character short of the width: a line that fills the last column wraps on some
    // terminals, and then "\r" would redraw only its second half.
    const auto fit = static_cast<std::size_t>(std::max(columns_ - 1, 10));
    if (line.size() > fit) line.resize(fit);
    write("\r" + line + "\x1b[K");
}

std::string progress_reporter::bar_line() const {
    std::lock_guard lock(m_);
    return bar_line_locked(now());
}

std::string progress_reporter::bar_line_locked(std::chrono::steady_clock::time_point t) const {
    const double elapsed = started_ ? std::chrono::duration<double>(t - start_).count() : 0.0;
    const int digits = static_cast<int>(std::to_string(total_).size());
    const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
    std::string eta = "--:--";
    if (done_ == total_) {
        eta = clock_text(0);
    } else if (done_ > 0) {
        eta =
            clock_text(elapsed / static_cast<double>(done_) * static_cast<double>(total_ - done_));
    }

    char buf[256];
    std::snprintf(buf, sizeof buf, "] %*zu/%zu  %zu failed", digits, done_, total_, failed_);
    std::string counts = buf;
    if (retried_ > 0) counts += "  " + std::to_string(retried_) + " retried";
    std::snprintf(buf, sizeof buf, "  %.1f/s  elapsed %s  ETA %s", rate,
                  clock_text(elapsed).c_str(), eta.c_str());
    counts += buf;

    // The bar takes the room the text leaves, within limits; the line is cut if needed.
    const int room = columns_ - 1 - static_cast<int>(opts_.label.size() + 2 + counts.size());
    const auto width = static_cast<std::size_t>(std::clamp(room, min_bar_width, max_bar_width));
    const std::size_t filled = total_ == 0 ? width : done_ * width / total_;
    std::string bar(filled, '#');
    bar.append(width - filled, '.');
    return opts_.label + " [" + bar + counts;
}

std::string progress_reporter::start_line() const {
    std::lock_guard lock(m_);
    return start_line_locked();
}

std::string progress_reporter::summary_line() const {
    std::lock_guard lock(m_);
    return summary_line_locked(now());
}

std::string progress_reporter::start_line_locked() const {
    return "procpool: starting " + opts_.label + ": workers = " + std::to_string(workers_) +
           ", tasks = " + std::to_string(total_);
}

std::string progress_reporter::summary_line_locked(std::chrono::steady_clock::time_point t) const {
    const double wall = started_ ? std::chrono::duration<double>(t - start_).count() : 0.0;
    char buf[64];
    std::snprintf(buf, sizeof buf, ", wall time %.2f s", wall);
    std::string s = "procpool: " + opts_.label + " done: " + std::to_string(done_) + " of " +
                    std::to_string(total_) + " tasks, " + std::to_string(done_ - failed_) +
                    " ok, " + std::to_string(failed_) + " failed";
    if (retried_ > 0) s += ", " + std::to_string(retried_) + " retried";
    return s + buf;
}

}  // namespace procpool
