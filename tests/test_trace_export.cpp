// trace_recorder's exports on hand-built traces (no pools): the Chrome trace JSON parses and
// holds exactly the expected events, the SVG has one lane per worker and one bar per task
// (merged when tiny, failed tasks kept), every text is escaped, output is deterministic, and
// save_* write whole files or throw naming the path.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "procpool/error.hpp"
#include "procpool/trace.hpp"
#include "trace_sample.hpp"

namespace {

using nlohmann::json;
using procpool::task_status;
using procpool::task_trace;
using procpool::trace_recorder;
using procpool::worker_trace;
using procpool_test::at_ms;
using procpool_test::many_counts;
using procpool_test::sample_counts;

const std::string dot = " \u00b7 ";  // the separator of tooltip fields

std::string chrome_json(const trace_recorder& r) {
    std::ostringstream out;
    r.write_chrome_json(out);
    return out.str();
}

std::string svg(const trace_recorder& r, const procpool::svg_options& o = {}) {
    std::ostringstream out;
    r.write_svg(out, o);
    return out.str();
}

std::size_t count(std::string_view text, std::string_view needle) {
    std::size_t n = 0;
    for (auto at = text.find(needle); at != std::string_view::npos;
         at = text.find(needle, at + needle.size()))
        ++n;
    return n;
}

/// The (first) line of `text` that contains `needle`; empty if none.
std::string line_with(const std::string& text, std::string_view needle) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (line.find(needle) != std::string::npos) return line;
    return {};
}

/// The numeric value of attribute `name` in one element's markup.
double attribute(const std::string& element, const std::string& name) {
    const auto at = element.find(" " + name + "=\"");
    if (at == std::string::npos) return -1;
    return std::strtod(element.c_str() + at + name.size() + 3, nullptr);
}

/// Whether `s` is valid UTF-8 holding no control character but \t \n \r (what XML allows).
bool xml_clean_utf8(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') return false;
        if (c == 0x7F) return false;
        std::size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                                     : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (len == 0 || i + len > s.size()) return false;
        for (std::size_t k = 1; k < len; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        i += len;
    }
    return true;
}

std::vector<json> events(const json& doc, std::string_view ph) {
    std::vector<json> out;
    for (const json& e : doc.at("traceEvents"))
        if (e.at("ph") == ph) out.push_back(e);
    return out;
}

/// The one event of phase `ph` named `name` in process `pid` (fails the test if not one).
json event(const json& doc, std::string_view ph, const std::string& name, int pid,
           std::uint32_t attempt = 1) {
    std::vector<json> found;
    for (const json& e : events(doc, ph))
        if (e.at("name") == name && e.at("pid") == pid &&
            (!e.contains("args") || !e["args"].contains("attempt") ||
             e["args"]["attempt"] == attempt))
            found.push_back(e);
    EXPECT_EQ(found.size(), 1u) << ph << " " << name << " in pid " << pid;
    return found.empty() ? json() : found.front();
}

task_trace simple_task(std::uint64_t id, int worker, double start, double end,
                       task_status st = task_status::ok) {
    task_trace t;
    t.id = id;
    t.worker = worker;
    t.pid = 1000 + worker;
    t.submit_ns = at_ms(start);
    t.start_ns = at_ms(start);
    t.end_ns = at_ms(end);
    t.status = st;
    return t;
}

// ---- Chrome trace JSON -------------------------------------------------------------------------

TEST(TraceJson, Sample_ParsesWithExactlyTheExpectedEvents) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const json doc = json::parse(chrome_json(r));
    EXPECT_EQ(doc.at("displayTimeUnit"), "ms");
    EXPECT_TRUE(doc.at("otherData").is_object());
    EXPECT_EQ(events(doc, "X").size(), sample_counts::started);
    EXPECT_EQ(events(doc, "i").size(), sample_counts::never_started + sample_counts::worker_events);
    // A process name per pool, a thread name per lane.
    EXPECT_EQ(events(doc, "M").size(), sample_counts::pools + sample_counts::lanes);
    EXPECT_EQ(doc.at("traceEvents").size(), sample_counts::started + sample_counts::never_started +
                                                sample_counts::worker_events +
                                                sample_counts::pools + sample_counts::lanes);
}

TEST(TraceJson, CompleteEvents_CarryTimesInMicrosecondsFromTheEarliestAndTheArgs) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const json doc = json::parse(chrome_json(r));

    const json t1 = event(doc, "X", "task 1", 1);
    EXPECT_EQ(t1.at("ts"), 1000.0);  // started 1 ms after the earliest submit
    EXPECT_EQ(t1.at("dur"), 4000.0);
    EXPECT_EQ(t1.at("tid"), 1);  // worker 0
    EXPECT_EQ(t1.at("cat"), "ok");
    const json& a1 = t1.at("args");
    EXPECT_EQ(a1.at("id"), 1);
    EXPECT_EQ(a1.at("status"), "ok");
    EXPECT_EQ(a1.at("attempt"), 1);
    EXPECT_EQ(a1.at("bytes_in"), 100);
    EXPECT_EQ(a1.at("bytes_out"), 10);
    EXPECT_EQ(a1.at("queue_wait_us"), 1000.0);
    EXPECT_FALSE(a1.contains("error"));

    const json t2 = event(doc, "X", "task 2", 1);
    EXPECT_EQ(t2.at("tid"), 2);
    EXPECT_EQ(t2.at("cat"), "exception");
    EXPECT_EQ(t2.at("args").at("error"), procpool_test::hostile_error);  // round trip, exact

    EXPECT_EQ(event(doc, "X", "task 5", 1).at("cat"), "timeout");
    EXPECT_EQ(event(doc, "X", "task 7", 1).at("cat"), "failed");
    EXPECT_EQ(event(doc, "X", "task 3", 1, 1).at("cat"), "worker_died");
    // The other pool: pid 2, its own time (same origin).
    const json p2 = event(doc, "X", "task 1", 2);
    EXPECT_EQ(p2.at("ts"), 2000.0);
    EXPECT_EQ(p2.at("dur"), 6000.0);
}

TEST(TraceJson, Retries_AreOneEventPerAttempt) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const json doc = json::parse(chrome_json(r));
    const json first = event(doc, "X", "task 3", 1, 1);
    const json retry = event(doc, "X", "task 3", 1, 2);
    EXPECT_EQ(first.at("args").at("status"), "worker_died");
    EXPECT_EQ(first.at("args").at("error"), "killed by SIGSEGV");
    EXPECT_EQ(retry.at("args").at("status"), "ok");
    EXPECT_EQ(retry.at("ts"), 10000.0);
}

TEST(TraceJson, TaskThatNeverStarted_IsAnInstantOnTheQueueLaneAtItsEnd) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const json doc = json::parse(chrome_json(r));
    const json t6 = event(doc, "i", "task 6", 1);
    EXPECT_EQ(t6.at("tid"), 0);
    EXPECT_EQ(t6.at("s"), "t");
    EXPECT_EQ(t6.at("ts"), 14000.0);
    EXPECT_EQ(t6.at("cat"), "cancelled");
    EXPECT_EQ(t6.at("args").at("queue_wait_us"), 12000.0);  // submitted at 2 ms
    EXPECT_FALSE(t6.contains("dur"));
}

TEST(TraceJson, WorkerEvents_AreThreadInstantsNamedByWhatHappened) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const json doc = json::parse(chrome_json(r));
    const json crash = event(doc, "i", "worker exited: killed by SIGSEGV", 1);
    EXPECT_EQ(crash.at("s"), "t");
    EXPECT_EQ(crash.at("tid"), 1);
    EXPECT_EQ(crash.at("ts"), 9000.0);
    EXPECT_EQ(crash.at("args").at("pid"), 101);
    EXPECT_EQ(event(doc, "i", "worker started", 1).at("args").at("pid"), 103);
    EXPECT_EQ(event(doc, "i", "worker exited", 1).at("tid"), 3);  // no reason: just "exited"
    EXPECT_EQ(event(doc, "i", "worker exited: shut down", 2).at("ts"), 17000.0);
}

TEST(TraceJson, Metadata_NamesPoolsWithHostAndWorkersWithTheirLatestPid) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const json doc = json::parse(chrome_json(r));
    std::vector<std::string> names;
    for (const json& e : events(doc, "M"))
        names.push_back(e.at("name").get<std::string>() + " " +
                        std::to_string(e.at("pid").get<int>()) + "/" +
                        std::to_string(e.at("tid").get<int>()) + " " +
                        e.at("args").at("name").get<std::string>());
    const std::vector<std::string> expected = {
        "process_name 1/0 process_pool on node-a",
        "process_name 2/0 thread_pool <&> 'x' on node-a",
        "thread_name 1/0 queue",
        "thread_name 1/1 worker 0 (pid 103)",  // 101 crashed, 103 replaced it
        "thread_name 1/2 worker 1 (pid 104)",
        "thread_name 1/3 worker 2 (pid 105)",
        "thread_name 2/1 worker 0 (pid 100)",
    };
    EXPECT_EQ(names, expected);
}

TEST(TraceJson, HostileStrings_RoundTripOrBecomeReplacementCharacters) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const std::string text = chrome_json(r);
    const json doc = json::parse(text);  // would throw on invalid UTF-8 or a raw control char
    // Control characters survive (escaped by JSON); invalid bytes become U+FFFD.
    EXPECT_EQ(event(doc, "X", "task 7", 1).at("args").at("error"),
              "bad\x01\x02 wire\x7f\nline 2\t\uFFFD\uFFFD end");
    EXPECT_EQ(event(doc, "X", "task 2", 2).at("args").at("error"), "cut \uFFFD here, caf\u00e9");
    EXPECT_EQ(text.find('\x01'), std::string::npos);
}

TEST(TraceJson, UnregisteredPoolAndEmptyTrace_StillValid) {
    trace_recorder empty;
    const json e = json::parse(chrome_json(empty));
    EXPECT_TRUE(e.at("traceEvents").empty());

    trace_recorder r;
    task_trace t = simple_task(1, 0, 0, 1);
    t.pool = 4;  // no add_pool: named by number
    r.record(t);
    const json doc = json::parse(chrome_json(r));
    EXPECT_EQ(event(doc, "M", "process_name", 5).at("args").at("name"), "pool 5");
    EXPECT_EQ(events(doc, "X").size(), 1u);
}

TEST(TraceJson, SameInput_SameBytes) {
    trace_recorder a, b;
    procpool_test::fill_sample(a);
    procpool_test::fill_sample(b);
    EXPECT_EQ(chrome_json(a), chrome_json(a));
    EXPECT_EQ(chrome_json(a), chrome_json(b));
}

// ---- SVG ---------------------------------------------------------------------------------------

TEST(TraceSvg, Sample_OneLanePerWorkerAndOneTitledBarPerTask) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const std::string s = svg(r);
    EXPECT_EQ(s.rfind("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg ", 0), 0u);
    EXPECT_EQ(s.substr(s.size() - 7), "</svg>\n");
    EXPECT_EQ(count(s, "<g class=\"lane\""), sample_counts::lanes);
    EXPECT_EQ(count(s, "<rect class=\"task\""), sample_counts::tasks);
    EXPECT_EQ(count(s, "<rect class=\"merged\""), 0u);
    EXPECT_EQ(count(s, "<path class=\"worker-exit\""), sample_counts::worker_exits);
    EXPECT_EQ(count(s, "<title>"), count(s, "</title>"));
    // Every bar has its tooltip.
    std::istringstream in(s);
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("<rect class=\"task\"", 0) == 0) {
            EXPECT_NE(line.find("><title>task "), std::string::npos) << line;
        }
    }
    // No external references: self-contained.
    EXPECT_EQ(s.find("href"), std::string::npos);
    EXPECT_EQ(s.find("<script"), std::string::npos);
}

TEST(TraceSvg, Lanes_AreLabelledPoolWorkerAndLatestPid) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const std::string s = svg(r);
    for (const char* label : {">process_pool / queue<", ">process_pool / w0 (103)<",
                              ">process_pool / w1 (104)<", ">process_pool / w2 (105)<",
                              ">thread_pool &lt;&amp;&gt; &apos;x&apos; / w0 (100)<"})
        EXPECT_NE(s.find(label), std::string::npos) << label;
    EXPECT_NE(s.find("<g class=\"lane\" data-pool=\"0\" data-worker=\"-1\">"), std::string::npos);
    EXPECT_NE(s.find("<g class=\"lane\" data-pool=\"1\" data-worker=\"0\">"), std::string::npos);
}

TEST(TraceSvg, Bars_HaveTheStatusColourAndTheTooltipFields) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const std::string s = svg(r);
    const struct {
        std::string title;
        const char* fill;
    } bars[] = {
        {"task 1" + dot + "ok" + dot + "4.000 ms" + dot + "attempt 1</title>", "#4caf50"},
        {"task 3" + dot + "worker_died" + dot + "4.000 ms" + dot + "attempt 1" + dot +
             "killed by SIGSEGV</title>",
         "#dc2626"},
        {"task 3" + dot + "ok" + dot + "2.000 ms" + dot + "attempt 2</title>", "#4caf50"},
        {"task 5" + dot + "timeout" + dot + "10.000 ms" + dot + "attempt 1", "#8e44ad"},
        {"task 6" + dot + "cancelled" + dot + "never started" + dot + "attempt 1", "#9e9e9e"},
        {"task 2" + dot + "exception" + dot + "2.000 ms", "#f59e0b"},
    };
    for (const auto& b : bars) {
        const std::string line = line_with(s, b.title);
        ASSERT_FALSE(line.empty()) << b.title;
        EXPECT_NE(line.find(std::string("fill=\"") + b.fill + "\""), std::string::npos) << line;
    }
    // task 7 (failed) spans two lines: its error holds a newline.
    EXPECT_NE(line_with(s, "task 7" + dot + "failed").find("fill=\"#7f1d1d\""), std::string::npos);
}

TEST(TraceSvg, HostileText_IsEscapedControlsDroppedInvalidUtf8Replaced) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const std::string s = svg(r, {.title = "a <b> & \"c\" 'd'\x01"});
    EXPECT_TRUE(xml_clean_utf8(s));
    EXPECT_EQ(s.find("<script>"), std::string::npos);
    EXPECT_NE(s.find("std::runtime_error: &lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&apos;"
                     "</title>"),
              std::string::npos);
    EXPECT_NE(s.find("bad wire\nline 2\t\uFFFD\uFFFD end</title>"), std::string::npos);
    EXPECT_NE(s.find("cut \uFFFD here, caf\u00e9</title>"), std::string::npos);
    EXPECT_NE(s.find(">a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos;</text>"), std::string::npos);
    // Every & starts an entity.
    for (auto at = s.find('&'); at != std::string::npos; at = s.find('&', at + 1)) {
        const std::string_view rest(s.c_str() + at, std::min<std::size_t>(6, s.size() - at));
        EXPECT_TRUE(rest.starts_with("&amp;") || rest.starts_with("&lt;") ||
                    rest.starts_with("&gt;") || rest.starts_with("&quot;") ||
                    rest.starts_with("&apos;"))
            << rest;
    }
}

TEST(TraceSvg, EveryKindOfBadByte_YieldsCleanXml) {
    trace_recorder r;
    std::string all;
    for (int c = 0; c < 256; ++c) all += static_cast<char>(c);
    // Overlongs, surrogates, above U+10FFFF, truncated sequences, U+FFFE.
    all += "\xc0\xaf \xe0\x80\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xf0\x9f\x98 \xef\xbf\xbe ok";
    task_trace t = simple_task(1, 0, 0, 1, task_status::exception);
    t.error = all;
    r.record(t);
    r.record(worker_trace{0, 0, 7, at_ms(1), worker_trace::kind::exited, all});
    const std::string s = svg(r, {.title = all});
    EXPECT_TRUE(xml_clean_utf8(s));
    EXPECT_EQ(s.find("\xef\xbf\xbe"), std::string::npos);
    EXPECT_NE(s.find(" ok</title>"), std::string::npos);
}

TEST(TraceSvg, LongErrors_AreCutInTheTooltip) {
    trace_recorder r;
    task_trace t = simple_task(1, 0, 0, 1, task_status::exception);
    t.error = std::string(5000, 'e');
    r.record(t);
    const std::string s = svg(r);
    EXPECT_NE(s.find(std::string(300, 'e') + "\u2026</title>"), std::string::npos);
    EXPECT_EQ(s.find(std::string(301, 'e')), std::string::npos);
}

TEST(TraceSvg, ThousandsOfTinyTasks_AreMergedButEveryFailedTaskStays) {
    trace_recorder r;
    procpool_test::fill_many(r);
    const std::string s = svg(r);
    EXPECT_EQ(count(s, "<g class=\"lane\""), many_counts::workers);
    const std::size_t singles = count(s, "<rect class=\"task\"");
    const std::size_t merged = count(s, "<rect class=\"merged\"");
    EXPECT_GT(merged, 0u);
    EXPECT_LT(singles + merged, many_counts::tasks / 4);
    EXPECT_NE(s.find("class=\"merge-note\""), std::string::npos);

    // Each failed task keeps its own bar and tooltip, at least a pixel wide.
    for (std::size_t id = 500; id <= many_counts::tasks; id += 500) {
        const std::string line =
            line_with(s, "<title>task " + std::to_string(id) + dot + "exception");
        ASSERT_FALSE(line.empty()) << id;
        EXPECT_EQ(line.rfind("<rect class=\"task\"", 0), 0u) << line;
        EXPECT_GE(attribute(line, "width"), 1.0) << line;
        EXPECT_NE(line.find("fill=\"#f59e0b\""), std::string::npos) << line;
    }
    EXPECT_EQ(singles, many_counts::failed);

    // The merged bars account for every task; those holding a failure wear its colour.
    std::size_t tasks = 0, failed = 0;
    std::istringstream in(s);
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("<rect class=\"merged\"", 0) != 0) continue;
        // "<title>N tasks, K failed[ (1 exception)] · ..."
        const auto title = line.find("<title>");
        ASSERT_NE(title, std::string::npos) << line;
        char* rest = nullptr;
        const unsigned long n = std::strtoul(line.c_str() + title + 7, &rest, 10);
        ASSERT_EQ(std::string_view(rest).substr(0, 8), " tasks, ") << line;
        const unsigned long k = std::strtoul(rest + 8, &rest, 10);
        ASSERT_EQ(std::string_view(rest).substr(0, 7), " failed") << line;
        tasks += n;
        failed += k;
        if (k > 0) {
            EXPECT_TRUE(std::string_view(rest).substr(7).starts_with(" (1 exception)" + dot))
                << line;
        }
        EXPECT_NE(line.find(k == 0 ? "fill=\"#4caf50\"" : "fill=\"#f59e0b\""), std::string::npos)
            << line;
        EXPECT_GE(attribute(line, "width"), 1.0) << line;
        EXPECT_LE(attribute(line, "width"), 8.0) << line;
    }
    EXPECT_EQ(tasks, many_counts::tasks);
    EXPECT_EQ(failed, many_counts::failed);
}

TEST(TraceSvg, ATinyFailedTaskAlone_IsStillAPixelWide) {
    trace_recorder r;
    r.record(simple_task(1, 0, 0, 1000));
    task_trace tiny = simple_task(2, 1, 500, 500, task_status::worker_died);
    tiny.end_ns = tiny.start_ns + 1;  // 1 ns in a second
    r.record(tiny);
    const std::string s = svg(r);
    const std::string line = line_with(s, "<title>task 2" + dot + "worker_died");
    ASSERT_FALSE(line.empty());
    EXPECT_EQ(attribute(line, "width"), 1.0);
    EXPECT_EQ(count(s, "<rect class=\"merged\""), 0u);
}

TEST(TraceSvg, WorkerExits_AreMarkedWithTheirReason) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const std::string s = svg(r);
    const std::string crash = line_with(s, "worker 0 (pid 101) exited: killed by SIGSEGV");
    EXPECT_EQ(crash.rfind("<path class=\"worker-exit\"", 0), 0u) << crash;
    EXPECT_NE(line_with(s, "worker 2 (pid 105) exited" + dot + "at 16.000 ms").find("worker-exit"),
              std::string::npos);
}

TEST(TraceSvg, TimeAxis_HasFiveToTenNiceTicks) {
    const struct {
        double span_ms;
        const char* last_label;
    } cases[] = {
        {0.01, ">0.010 ms<"}, {0.37, ">0.35 ms<"}, {1, ">1.0 ms<"}, {17, ">16 ms<"},
        {95, ">90 ms<"},      {999, ">900 ms<"}, {3700, ">3.5 s<"}, {125000, ">120 s<"},
    };
    for (const auto& c : cases) {
        trace_recorder r;
        r.record(simple_task(1, 0, 0, c.span_ms));
        const std::string s = svg(r);
        const std::size_t ticks = count(s, "<text class=\"tick\"");
        EXPECT_GE(ticks, 5u) << c.span_ms;
        EXPECT_LE(ticks, 10u) << c.span_ms;
        EXPECT_NE(s.find(c.last_label), std::string::npos) << c.span_ms << "\n" << s;
    }
}

TEST(TraceSvg, EmptyTrace_IsAValidSvgSayingSo) {
    trace_recorder r;
    const std::string s = svg(r, {.title = "nothing"});
    EXPECT_EQ(s.rfind("<?xml", 0), 0u);
    EXPECT_NE(s.find(">no tasks recorded</text>"), std::string::npos);
    EXPECT_NE(s.find(">nothing</text>"), std::string::npos);
    EXPECT_EQ(s.substr(s.size() - 7), "</svg>\n");
    EXPECT_EQ(count(s, "<g class=\"lane\""), 0u);

    // Worker events but no tasks: their lanes, and the note.
    r.record(worker_trace{r.add_pool({"process_pool", 1, "h"}), 0, 5, at_ms(1),
                          worker_trace::kind::exited, "killed by SIGKILL"});
    const std::string w = svg(r);
    EXPECT_EQ(count(w, "<g class=\"lane\""), 1u);
    EXPECT_NE(w.find(">no tasks recorded</text>"), std::string::npos);
    EXPECT_NE(w.find("killed by SIGKILL"), std::string::npos);
}

TEST(TraceSvg, Options_SizeTheDrawingAndAreClamped) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    const std::string wide = svg(r, {.width = 2000, .lane_height = 30});
    EXPECT_NE(wide.find("width=\"2000\""), std::string::npos);
    EXPECT_NE(wide.find("height=\"30\""), std::string::npos);  // a lane's background
    const std::string tiny = svg(r, {.width = 10, .lane_height = -3});
    EXPECT_NE(tiny.find("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"320\""),
              std::string::npos);
    EXPECT_NE(tiny.find("height=\"8\""), std::string::npos);
}

TEST(TraceSvg, LongLabels_AreCutWithTheWholeAsTooltip) {
    trace_recorder r;
    const auto p = r.add_pool({std::string(200, 'p'), 1, "h"});
    task_trace t = simple_task(1, 0, 0, 1);
    t.pool = p;
    r.record(t);
    const std::string s = svg(r);
    const std::string label = line_with(s, "class=\"lane-label\"");
    EXPECT_NE(label.find("\u2026<title>" + std::string(200, 'p') + " / w0 (1000)</title>"),
              std::string::npos)
        << label;
}

TEST(TraceSvg, SameInput_SameBytes) {
    trace_recorder a, b;
    procpool_test::fill_sample(a);
    procpool_test::fill_sample(b);
    EXPECT_EQ(svg(a), svg(a));
    EXPECT_EQ(svg(a), svg(b));
    trace_recorder m1, m2;
    procpool_test::fill_many(m1);
    procpool_test::fill_many(m2);
    EXPECT_EQ(svg(m1), svg(m2));
}

// ---- save_* ------------------------------------------------------------------------------------

class TraceSave : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/procpool-trace-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
    }
    void TearDown() override {
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }
    std::vector<std::string> files() const {
        std::vector<std::string> out;
        if (DIR* d = ::opendir(dir_.c_str())) {
            while (const dirent* e = ::readdir(d))
                if (std::string_view(e->d_name) != "." && std::string_view(e->d_name) != "..")
                    out.emplace_back(e->d_name);
            ::closedir(d);
        }
        std::sort(out.begin(), out.end());
        return out;
    }
    static std::string read(const std::string& path) {
        std::ifstream in(path, std::ios::binary);
        return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    }
    std::string dir_;
};

TEST_F(TraceSave, WritesWhatWriteWrites_LeavingNoTemporaryFile) {
    trace_recorder r;
    procpool_test::fill_sample(r);
    r.save_chrome_json(dir_ + "/trace.json");
    r.save_svg(dir_ + "/timeline.svg", {.title = "t"});
    EXPECT_EQ(read(dir_ + "/trace.json"), chrome_json(r));
    EXPECT_EQ(read(dir_ + "/timeline.svg"), svg(r, {.title = "t"}));
    EXPECT_EQ(files(), (std::vector<std::string>{"timeline.svg", "trace.json"}));
}

TEST_F(TraceSave, ReplacesAnExistingFile) {
    {
        std::ofstream old(dir_ + "/trace.json");
        old << std::string(100000, 'x');
    }
    trace_recorder r;
    r.record(simple_task(1, 0, 0, 1));
    r.save_chrome_json(dir_ + "/trace.json");
    EXPECT_EQ(read(dir_ + "/trace.json"), chrome_json(r));
    EXPECT_EQ(files(), std::vector<std::string>{"trace.json"});
}

TEST_F(TraceSave, UnwritablePath_ThrowsNamingThePathAndTheReason) {
    trace_recorder r;
    const std::string path = dir_ + "/no/such/dir/trace.json";
    try {
        r.save_chrome_json(path);
        FAIL() << "no throw";
    } catch (const procpool::error& e) {
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos)
            << e.what();
    }
    // A directory in the way of the rename.
    ::mkdir((dir_ + "/timeline.svg").c_str(), 0700);
    EXPECT_THROW(r.save_svg(dir_ + "/timeline.svg"), procpool::error);
    EXPECT_EQ(files(), std::vector<std::string>{"timeline.svg"});  // no temporary left
}

}  // namespace
