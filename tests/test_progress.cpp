// progress_reporter: exact log lines, the redrawn bar, throttling, and the real thing
// under a pseudo-terminal.
#include "procpool/progress.hpp"

#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>

#include "procpool/run.hpp"
#include "run_support.hpp"

namespace {

using procpool_test::numbers;
using namespace std::chrono_literals;
using procpool::progress_options;
using procpool::progress_reporter;
using clock_type = std::chrono::steady_clock;

/// A clock the test moves by hand.
struct fake_clock {
    clock_type::time_point t{std::chrono::hours(1)};
    auto source() {
        return [this] { return t; };
    }
};

progress_options opts(std::ostringstream& out, fake_clock& c, bool terminal, int columns = 200) {
    progress_options o;
    o.label = "run_in_processes";
    o.out = &out;
    o.terminal = terminal;
    o.columns = columns;
    o.clock = c.source();
    return o;
}

// ---- logs (not a terminal) ---------------------------------------------------------------

TEST(Progress, NotATerminal_WritesTheStartLineAndTheSummaryLine_Exactly) {
    std::ostringstream out;
    fake_clock c;
    {
        progress_reporter p(4, 2, opts(out, c, false));
        p.start();
        c.t += 1500ms;
        p.task_finished(true);
        p.task_finished(false);
        p.refresh();
        c.t += 1710ms;
        p.task_finished(true);
        p.task_finished(true);
        p.finish();
    }
    EXPECT_EQ(out.str(),
              "procpool: starting run_in_processes: workers = 2, tasks = 4\n"
              "procpool: run_in_processes done: 4 of 4 tasks, 3 ok, 1 failed, wall time 3.21 s\n");
}

TEST(Progress, NotATerminal_NeverWritesControlCharacters) {
    std::ostringstream out;
    fake_clock c;
    progress_reporter p(100, 4, opts(out, c, false));
    p.start();
    for (int i = 0; i < 100; ++i) {
        c.t += 250ms;
        p.task_finished(i % 10 != 0);
        if (i % 7 == 0) p.task_retried();
        p.refresh();
    }
    p.finish();
    for (char ch : out.str()) {
        EXPECT_TRUE(ch == '\n' || (ch >= 0x20 && ch < 0x7f))
            << "control character " << static_cast<int>(ch);
    }
    EXPECT_NE(out.str().find("100 of 100 tasks, 90 ok, 10 failed, 15 retried, wall time 25.00 s"),
              std::string::npos)
        << out.str();
}

TEST(Progress, Finish_WritesOnlyOnce_AndTheDestructorFinishes) {
    std::ostringstream out;
    fake_clock c;
    {
        progress_reporter p(1, 1, opts(out, c, false));
        p.task_finished(true);  // starts implicitly
    }
    EXPECT_EQ(out.str(),
              "procpool: starting run_in_processes: workers = 1, tasks = 1\n"
              "procpool: run_in_processes done: 1 of 1 tasks, 1 ok, 0 failed, wall time 0.00 s\n");
}

// ---- terminal ------------------------------------------------------------------------------

TEST(Progress, BarLine_ShowsBarDoneTotalFailuresRateElapsedAndEta) {
    std::ostringstream out;
    fake_clock c;
    progress_reporter p(10, 4, opts(out, c, true));
    p.start();
    c.t += 2s;
    for (int i = 0; i < 5; ++i) p.task_finished(i != 2);

    EXPECT_EQ(
        p.bar_line(),
        "run_in_processes [###############...............]  5/10  1 failed  2.5/s  elapsed 0:02  "
        "ETA 0:02");
}

TEST(Progress, BarLine_BeforeAnyTaskFinished_HasNoEta_AndShowsRetries) {
    std::ostringstream out;
    fake_clock c;
    progress_reporter p(3, 1, opts(out, c, true));
    p.start();
    p.task_retried();
    c.t += 75s;
    EXPECT_EQ(p.bar_line(),
              "run_in_processes [..............................] 0/3  0 failed  1 retried  0.0/s  "
              "elapsed 1:15  ETA --:--");
}

TEST(Progress, Terminal_RedrawsOneLine_AtMostOncePerInterval_ThenEndsItWithANewline) {
    std::ostringstream out;
    fake_clock c;
    progress_reporter p(4, 2, opts(out, c, true));
    p.start();  // draw 1
    c.t += 50ms;
    p.task_finished(true);  // too soon: no draw
    c.t += 60ms;
    p.task_finished(true);  // 110 ms after the last draw: draw 2
    p.refresh();            // too soon: no draw
    c.t += 100ms;
    p.refresh();  // draw 3: time moved on
    c.t += 10ms;
    p.task_finished(false);
    p.task_finished(true);
    p.finish();  // draw 4, always

    const std::string s = out.str();
    EXPECT_EQ(
        s,
        "\rrun_in_processes [..............................] 0/4  0 failed  0.0/s  elapsed 0:00  "
        "ETA --:--\x1b[K"
        "\rrun_in_processes [###############...............] 2/4  0 failed  18.2/s  elapsed 0:00  "
        "ETA 0:00\x1b[K"
        "\rrun_in_processes [###############...............] 2/4  0 failed  9.5/s  elapsed 0:00  "
        "ETA 0:00\x1b[K"
        "\rrun_in_processes [##############################] 4/4  1 failed  18.2/s  elapsed 0:00  "
        "ETA 0:00\x1b[K\n");
    EXPECT_EQ(s.find("procpool: starting"), std::string::npos);
}

TEST(Progress, Terminal_BarTakesTheRoomTheTextLeaves) {
    std::ostringstream out;
    fake_clock c;
    progress_reporter p(10, 1, opts(out, c, true, 90));
    p.start();
    // 89 usable columns: 18 for the label, 49 for the counts, 22 for the bar.
    const std::string line = p.bar_line();
    EXPECT_EQ(line.size(), 89u) << line;
    EXPECT_EQ(line.rfind("run_in_processes [" + std::string(22, '.') + "]  0/10  0 failed", 0), 0u)
        << line;
}

TEST(Progress, Terminal_CutsTheLineToANarrowTerminal) {
    std::ostringstream out;
    fake_clock c;
    progress_reporter p(10, 1, opts(out, c, true, 40));
    p.start();
    EXPECT_EQ(out.str(), "\rrun_in_processes [..........]  0/10  0 \x1b[K");
}

TEST(Progress, NextRefresh_IsOneIntervalAfterTheLastDraw_OrNeverInLogs) {
    std::ostringstream out;
    fake_clock c;
    progress_reporter bar(1, 1, opts(out, c, true));
    bar.start();
    EXPECT_EQ(bar.next_refresh(), c.t + 100ms);

    progress_reporter logs(1, 1, opts(out, c, false));
    logs.start();
    EXPECT_EQ(logs.next_refresh(), clock_type::time_point::max());
}

// ---- a real pseudo-terminal ----------------------------------------------------------------

/// Runs `child` in a process whose stdin, stdout and stderr are a new pseudo-terminal and
/// returns everything it wrote there, once it has exited with status 0.
template <class F>
std::string run_in_pty(F child) {
    // The child inherits this process's stdio buffers: flush them, or whatever is still
    // pending (gtest's "Running main()" line, when stdout is a pipe or a file) lands on
    // the child's terminal when it first writes to std::cerr, which flushes std::cout.
    std::fflush(nullptr);
    int master = -1;
    const pid_t pid = forkpty(&master, nullptr, nullptr, nullptr);
    if (pid < 0) {
        ADD_FAILURE() << "forkpty failed, errno " << errno;
        return {};
    }
    if (pid == 0) {
        child();
        std::_Exit(0);
    }
    std::string got;
    char buf[4096];
    for (;;) {
        const ssize_t n = read(master, buf, sizeof buf);
        if (n > 0) {
            got.append(buf, static_cast<std::size_t>(n));
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            break;  // EIO once the child has closed the terminal's last descriptor
        }
    }
    close(master);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
    return got;
}

TEST(Progress, UnderAPseudoTerminal_RunInThreadsDrawsTheBar_AndNoLogLines) {
    const std::string got = run_in_pty([] {
        auto out = procpool::run_in_threads(
            [](int i) {
                std::this_thread::sleep_for(15ms);
                return i;
            },
            numbers(20), {.workers = 2, .show_progress = true});
        if (out.size() != 20) std::_Exit(3);
    });

    EXPECT_EQ(got.find("procpool: starting"), std::string::npos) << got;
    EXPECT_EQ(got.rfind("\rrun_in_threads [", 0), 0u) << got;
    // The final draw: a full bar (as wide as the default 80 columns leave) and 20/20.
    const auto last = got.rfind('\r', got.size() - 3);
    ASSERT_NE(last, std::string::npos) << got;
    const std::string final_line = got.substr(last + 1);
    EXPECT_NE(final_line.find("#] 20/20  0 failed"), std::string::npos) << final_line;
    EXPECT_EQ(final_line.find(".]"), std::string::npos) << final_line;
    ASSERT_FALSE(got.empty());
    // The terminal turns the final "\n" into "\r\n".
    EXPECT_EQ(got.substr(got.size() - 2), "\r\n");
}

TEST(Progress, UnderAPseudoTerminal_ADefaultReporterDetectsTheTerminal) {
    const std::string got = run_in_pty([] {
        progress_reporter p(1, 1);
        if (!p.terminal()) std::_Exit(4);
    });
    EXPECT_NE(got.find("\x1b[K"), std::string::npos) << got;
}

TEST(Progress, OutsideATerminal_ADefaultReporterWritesLogLines) {
    testing::internal::CaptureStderr();  // stderr is a file now
    {
        progress_reporter p(2, 1);
        EXPECT_FALSE(p.terminal());
    }
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(err.rfind("procpool: starting tasks: workers = 1, tasks = 2\n", 0), 0u) << err;
}

}  // namespace
