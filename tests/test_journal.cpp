// run_options::journal: records written as tasks finish, resumed runs that reuse them
// without running those tasks again, torn and garbled tails, a run killed by SIGKILL, and
// the procpool-journal tool. No timing: runs are counted by calls and marker files.
#include "procpool/journal.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "procpool/run.hpp"
#include "procpool/shared_array.hpp"
#include "procpool/thread_pool.hpp"
#include "process_support.hpp"
#include "run_support.hpp"

#ifdef PROCPOOL_JOURNAL_TOOL
#include <nlohmann/json.hpp>
#endif

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using procpool::failure_kind;
using procpool::journal_mode;
using procpool::read_journal;
using procpool::run_in_processes;
using procpool::run_in_threads;
using procpool_test::numbers;
using procpool_test::temp_dir;

/// The value a stored record holds, read back as a `T`.
template <class T>
T stored_value(const procpool::journal_record& r) {
    procpool::wire::reader in(r.value);
    return procpool::wire::load<T>(in);
}

/// The input indices of `records`, in file order.
std::vector<std::uint64_t> indices(const std::vector<procpool::journal_record>& records) {
    std::vector<std::uint64_t> out;
    for (const auto& r : records) out.push_back(r.index);
    return out;
}

std::multiset<std::uint64_t> index_set(const std::vector<procpool::journal_record>& records) {
    const auto v = indices(records);
    return {v.begin(), v.end()};
}

/// A thread task that counts its calls and returns i * i.
struct counting_square {
    std::atomic<int>* calls;
    int operator()(int i) const {
        calls->fetch_add(1);
        return i * i;
    }
};

TEST(Journal, FreshRun_WritesOneRecordPerTask) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<int> calls{0};
    const auto out = run_in_threads(counting_square{&calls}, numbers(8),
                                    {.workers = 2, .journal = path});
    ASSERT_EQ(out.size(), 8U);
    EXPECT_EQ(calls.load(), 8);

    const auto j = read_journal(path);
    EXPECT_EQ(j.header.version, 1U);
    EXPECT_EQ(j.header.task_count, 8U);
    EXPECT_EQ(j.header.result_type, "int");
    EXPECT_GT(j.header.created_unix_ns, 0);
    EXPECT_TRUE(j.tail_note.empty()) << j.tail_note;
    EXPECT_EQ(j.valid_bytes, j.file_bytes);
    EXPECT_EQ(j.file_bytes, fs::file_size(path));
    ASSERT_EQ(j.records.size(), 8U);
    EXPECT_EQ(index_set(j.records), (std::multiset<std::uint64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
    for (const auto& r : j.records) {
        EXPECT_TRUE(r.ok());
        EXPECT_TRUE(r.message.empty());
        EXPECT_EQ(r.attempts, 1U);
        EXPECT_GE(r.duration_ns, 0);
        EXPECT_EQ(stored_value<int>(r), static_cast<int>(r.index * r.index));
    }
}

TEST(Journal, Rerun_ReturnsStoredValues_WithoutRunning_AndReportsThem) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<int> calls{0};
    const auto first = run_in_threads(counting_square{&calls}, numbers(10),
                                      {.workers = 3, .journal = path});
    ASSERT_EQ(calls.load(), 10);

    std::vector<std::size_t> reported;
    const auto again = run_in_threads(
        counting_square{&calls}, numbers(10),
        {.workers = 3,
         .on_result = [&](std::size_t i, const procpool::outcome<int>& o) {
             EXPECT_TRUE(o.has_value());
             reported.push_back(i);
         },
         .journal = path});
    EXPECT_EQ(calls.load(), 10) << "a stored task ran again";
    ASSERT_EQ(again.size(), 10U);
    for (std::size_t i = 0; i < again.size(); ++i) {
        ASSERT_TRUE(again[i]) << again[i].error().what();
        EXPECT_EQ(again[i].index(), i);
        EXPECT_EQ(*again[i], *first[i]);
    }
    EXPECT_EQ(reported.size(), 10U) << "on_result is called for restored tasks too";
    EXPECT_EQ(read_journal(path).records.size(), 10U) << "restored tasks are not appended again";
}

TEST(Journal, RunInOwnPool_WithMaxInFlightAndSync_ResumesOnlyTheFailed) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    procpool::thread_pool pool({.workers = 2});
    std::mutex m;
    std::map<int, int> runs;
    std::atomic<bool> odd_fail{true};
    auto fn = [&](int i) {
        {
            std::lock_guard lock(m);
            ++runs[i];
        }
        if (i % 2 == 1 && odd_fail.load()) throw std::runtime_error("odd");
        return -i;
    };
    const auto first = procpool::run_in(pool, fn, numbers(10),
                                        {.max_in_flight = 2, .journal = path, .journal_sync = true});
    for (std::size_t i = 0; i < 10; ++i) EXPECT_EQ(static_cast<bool>(first[i]), i % 2 == 0);
    odd_fail = false;
    std::vector<std::size_t> order;
    const auto second = procpool::run_in(
        pool, fn, numbers(10),
        {.on_result = [&](std::size_t i, const procpool::outcome<int>&) { order.push_back(i); },
         .max_in_flight = 2,
         .journal = path,
         .journal_sync = true});
    for (int i = 0; i < 10; ++i) EXPECT_EQ(runs[i], i % 2 == 1 ? 2 : 1) << "task " << i;
    for (std::size_t i = 0; i < 10; ++i) {
        ASSERT_TRUE(second[i]) << second[i].error().what();
        EXPECT_EQ(*second[i], -static_cast<int>(i));
    }
    EXPECT_EQ(order.size(), 10U);
    EXPECT_EQ(read_journal(path).records.size(), 15U);
}

/// A process task with a side effect per run: a new file in `dir` each time it runs.
std::string mark_and_describe(std::string dir, int i) {
    std::string tmpl = dir + "/ran-" + std::to_string(i) + "-XXXXXX";
    const int fd = mkstemp(tmpl.data());
    if (fd >= 0) close(fd);
    return "value " + std::to_string(i * 3);
}

/// How many times each task ran, from the marker files `mark_and_describe` leaves.
std::map<int, int> runs_in(const std::string& dir) {
    std::map<int, int> runs;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string name = e.path().filename().string();
        if (name.rfind("ran-", 0) != 0) continue;
        ++runs[std::stoi(name.substr(4))];
    }
    return runs;
}

TEST(Journal, Processes_RerunReturnsStoredValues_WithoutRunning) {
    temp_dir dir;
    const std::string marks = dir.path() + "/marks";
    fs::create_directory(marks);
    const std::string path = dir.path() + "/run.journal";
    std::vector<std::tuple<std::string, int>> tasks;
    for (int i = 0; i < 6; ++i) tasks.emplace_back(marks, i);

    const auto first = run_in_processes(mark_and_describe, tasks, {.workers = 2, .journal = path});
    const std::map<int, int> once = {{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1}};
    EXPECT_EQ(runs_in(marks), once);
    const auto again = run_in_processes(mark_and_describe, tasks, {.workers = 2, .journal = path});
    EXPECT_EQ(runs_in(marks), once) << "a stored task ran again";
    ASSERT_EQ(again.size(), 6U);
    for (std::size_t i = 0; i < 6; ++i) {
        ASSERT_TRUE(first[i]) << first[i].error().what();
        ASSERT_TRUE(again[i]) << again[i].error().what();
        EXPECT_EQ(*again[i], "value " + std::to_string(i * 3));
    }
}

/// Fails task 2 (with std::out_of_range) while `*broken` is true; counts calls per task.
struct flaky {
    std::atomic<bool>* broken;
    std::mutex* m;
    std::map<int, int>* runs;
    int operator()(int i) const {
        {
            std::lock_guard lock(*m);
            ++(*runs)[i];
        }
        if (i == 2 && broken->load()) throw std::out_of_range("no element 2");
        return i + 100;
    }
};

TEST(Journal, Failures_RunAgainByDefault) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<bool> broken{true};
    std::mutex m;
    std::map<int, int> runs;
    const auto first = run_in_threads(flaky{&broken, &m, &runs}, numbers(5),
                                      {.workers = 2, .journal = path});
    ASSERT_FALSE(first[2]);
    EXPECT_EQ(runs, (std::map<int, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}}));
    const auto j = read_journal(path);
    ASSERT_EQ(j.records.size(), 5U);
    for (const auto& r : j.records) {
        if (r.index != 2) continue;
        ASSERT_TRUE(r.failure.has_value());
        EXPECT_EQ(*r.failure, failure_kind::exception);
        EXPECT_EQ(r.message, "std::out_of_range: no element 2");
        EXPECT_TRUE(r.value.empty());
    }

    broken = false;  // fixed: the rerun succeeds
    const auto second = run_in_threads(flaky{&broken, &m, &runs}, numbers(5),
                                       {.workers = 2, .journal = path});
    EXPECT_EQ(runs, (std::map<int, int>{{0, 1}, {1, 1}, {2, 2}, {3, 1}, {4, 1}}))
        << "only the failed task runs again";
    for (std::size_t i = 0; i < 5; ++i) {
        ASSERT_TRUE(second[i]) << second[i].error().what();
        EXPECT_EQ(*second[i], static_cast<int>(i) + 100);
    }
    const auto j2 = read_journal(path);
    EXPECT_EQ(j2.records.size(), 6U) << "the rerun appends its own record";
    EXPECT_TRUE(j2.records.back().ok());
    EXPECT_EQ(j2.records.back().index, 2U);

    const auto third = run_in_threads(flaky{&broken, &m, &runs}, numbers(5),
                                      {.workers = 2, .journal = path});
    EXPECT_EQ(runs, (std::map<int, int>{{0, 1}, {1, 1}, {2, 2}, {3, 1}, {4, 1}}));
    ASSERT_TRUE(third[2]);
    EXPECT_EQ(*third[2], 102);
}

TEST(Journal, Failures_KeptWithResumeKeepFailures) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<bool> broken{true};
    std::mutex m;
    std::map<int, int> runs;
    const auto first = run_in_threads(flaky{&broken, &m, &runs}, numbers(5),
                                      {.workers = 2, .journal = path});
    ASSERT_FALSE(first[2]);

    broken = false;
    const auto kept = run_in_threads(
        flaky{&broken, &m, &runs}, numbers(5),
        {.workers = 2, .journal = path, .journal_mode = journal_mode::resume_keep_failures});
    EXPECT_EQ(runs, (std::map<int, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}}))
        << "nothing runs again";
    ASSERT_FALSE(kept[2]);
    const procpool::task_error& e = kept[2].error();
    EXPECT_EQ(e.index(), 2U);
    EXPECT_EQ(e.kind(), failure_kind::exception);
    EXPECT_EQ(e.attempts(), 1);
    EXPECT_EQ(e.cause_message(), first[2].error().cause_message());
    EXPECT_STREQ(e.what(), first[2].error().what());
    const auto* remote = e.cause_as<procpool::remote_exception>();
    ASSERT_NE(remote, nullptr);
    EXPECT_EQ(remote->type_name(), "std::out_of_range");
    EXPECT_EQ(remote->message(), "no element 2");
    for (std::size_t i : {0U, 1U, 3U, 4U}) {
        ASSERT_TRUE(kept[i]);
        EXPECT_EQ(*kept[i], static_cast<int>(i) + 100);
    }
}

TEST(Journal, CancelledTasks_RunAgainEvenWhenKeepingFailures) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<bool> broken{true};
    std::mutex m;
    std::map<int, int> runs;
    // One worker, fail_fast: task 2 fails, 3 and 4 are cancelled without running.
    const auto first = run_in_threads(
        flaky{&broken, &m, &runs}, numbers(5),
        {.workers = 1, .fail_fast = true, .max_in_flight = 1, .journal = path});
    ASSERT_FALSE(first[3]);
    ASSERT_EQ(first[3].error().kind(), failure_kind::cancelled);
    EXPECT_EQ(runs, (std::map<int, int>{{0, 1}, {1, 1}, {2, 1}}));
    EXPECT_EQ(read_journal(path).records.size(), 5U) << "cancelled tasks are recorded too";

    const auto second = run_in_threads(
        flaky{&broken, &m, &runs}, numbers(5),
        {.workers = 1, .journal = path, .journal_mode = journal_mode::resume_keep_failures});
    EXPECT_EQ(runs, (std::map<int, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}}));
    ASSERT_FALSE(second[2]);
    EXPECT_EQ(second[2].error().kind(), failure_kind::exception);
    ASSERT_TRUE(second[3]);
    ASSERT_TRUE(second[4]);
}

TEST(Journal, OtherInputs_CountOrResultType_Throw_NamingWhatDiffers) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<int> calls{0};
    (void)run_in_threads(counting_square{&calls}, numbers(6), {.journal = path});
    ASSERT_EQ(calls.load(), 6);

    auto message_of = [](auto&& run) -> std::string {
        try {
            run();
        } catch (const procpool::invalid_argument& e) {
            return e.what();
        }
        return "no invalid_argument";
    };
    auto changed = numbers(6);
    changed[4] = 40;
    auto msg = message_of([&] {
        (void)run_in_threads(counting_square{&calls}, changed, {.journal = path});
    });
    EXPECT_NE(msg.find("another input list"), std::string::npos) << msg;
    EXPECT_NE(msg.find("pass journal_mode::restart to start over (or delete " + path + ")"),
              std::string::npos)
        << msg;

    msg = message_of([&] {
        (void)run_in_threads(counting_square{&calls}, numbers(7), {.journal = path});
    });
    EXPECT_NE(msg.find("written for 6 tasks, this run has 7"), std::string::npos) << msg;

    msg = message_of([&] {
        (void)run_in_threads([](int i) { return static_cast<long>(i); }, numbers(6),
                             {.journal = path});
    });
    EXPECT_NE(msg.find("results of type int, this run's are long"), std::string::npos) << msg;
    EXPECT_EQ(calls.load(), 6) << "a refused run runs nothing";

    // restart empties the journal and runs every task.
    const auto out = run_in_threads(counting_square{&calls}, changed,
                                    {.journal = path, .journal_mode = journal_mode::restart});
    EXPECT_EQ(calls.load(), 12);
    EXPECT_EQ(*out[4], 1600);
    const auto j = read_journal(path);
    EXPECT_EQ(j.records.size(), 6U);
    (void)run_in_threads(counting_square{&calls}, changed, {.journal = path});
    EXPECT_EQ(calls.load(), 12) << "the restarted journal resumes";
}

TEST(Journal, NotAJournal_Throws_RestartOverwrites) {
    temp_dir dir;
    const std::string path = dir.path() + "/notes.txt";
    std::ofstream(path) << "my precious notes\n";
    std::atomic<int> calls{0};
    try {
        (void)run_in_threads(counting_square{&calls}, numbers(3), {.journal = path});
        ADD_FAILURE() << "no exception";
    } catch (const procpool::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("is not a procpool journal"), std::string::npos)
            << e.what();
    }
    EXPECT_EQ(calls.load(), 0);
    EXPECT_THROW((void)read_journal(path), procpool::invalid_argument);
    (void)run_in_threads(counting_square{&calls}, numbers(3),
                         {.journal = path, .journal_mode = journal_mode::restart});
    EXPECT_EQ(read_journal(path).records.size(), 3U);
}

TEST(Journal, EmptyFile_IsStarted) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::ofstream(path).close();
    EXPECT_THROW((void)read_journal(path), procpool::invalid_argument);
    std::atomic<int> calls{0};
    (void)run_in_threads(counting_square{&calls}, numbers(3), {.journal = path});
    EXPECT_EQ(read_journal(path).records.size(), 3U);
}

TEST(Journal, TornHeader_IsStartedAgain_DamagedHeader_Throws) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<int> calls{0};
    (void)run_in_threads(counting_square{&calls}, numbers(3), {.journal = path});
    const std::string whole = [&] {
        std::ifstream in(path, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }();
    auto write = [&](const std::string& bytes) {
        std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    };

    // The run was killed while writing the header: nothing to keep, start again.
    write(whole.substr(0, 13));
    (void)run_in_threads(counting_square{&calls}, numbers(3), {.journal = path});
    EXPECT_EQ(calls.load(), 6);
    EXPECT_EQ(read_journal(path).records.size(), 3U);

    // A whole header that fails its check is damage: refuse rather than discard the records.
    std::string damaged = whole;
    damaged[20] = static_cast<char>(damaged[20] ^ 0x40);  // inside the header's task count
    write(damaged);
    try {
        (void)run_in_threads(counting_square{&calls}, numbers(3), {.journal = path});
        ADD_FAILURE() << "no exception";
    } catch (const procpool::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("damaged header"), std::string::npos) << e.what();
    }
    EXPECT_THROW((void)read_journal(path), procpool::invalid_argument);
    EXPECT_EQ(calls.load(), 6);
    (void)run_in_threads(counting_square{&calls}, numbers(3),
                         {.journal = path, .journal_mode = journal_mode::restart});
    EXPECT_EQ(calls.load(), 9);
}

TEST(Journal, TornLastRecord_IsIgnored_AndItsTaskRunsAgain) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<int> calls{0};
    (void)run_in_threads(counting_square{&calls}, numbers(6), {.workers = 2, .journal = path});
    const auto whole = read_journal(path);
    ASSERT_EQ(whole.records.size(), 6U);
    const std::uint64_t torn_index = whole.records.back().index;

    fs::resize_file(path, whole.file_bytes - 3);  // as a write cut short
    const auto torn = read_journal(path);
    EXPECT_EQ(torn.records.size(), 5U);
    EXPECT_FALSE(torn.tail_note.empty());
    EXPECT_LT(torn.valid_bytes, torn.file_bytes);

    const auto out =
        run_in_threads(counting_square{&calls}, numbers(6), {.workers = 2, .journal = path});
    EXPECT_EQ(calls.load(), 7) << "only the task whose record was torn runs again";
    for (std::size_t i = 0; i < 6; ++i) EXPECT_EQ(*out[i], static_cast<int>(i * i));
    const auto healed = read_journal(path);
    EXPECT_TRUE(healed.tail_note.empty()) << healed.tail_note;
    EXPECT_EQ(healed.valid_bytes, healed.file_bytes);
    ASSERT_EQ(healed.records.size(), 6U);
    EXPECT_EQ(healed.records.back().index, torn_index);
}

TEST(Journal, GarbageAfterTheLastRecord_IsIgnored_AndCutOff) {
    // Random bytes, zeros (what a file system may leave after a crash) and a plausible
    // size field with nothing after it.
    std::vector<std::vector<unsigned char>> tails;
    tails.emplace_back();
    for (int i = 0; i < 37; ++i) tails.back().push_back(static_cast<unsigned char>(i * 73 + 11));
    tails.emplace_back(64, 0);
    tails.push_back({16, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3});
    for (const auto& tail : tails) {
        temp_dir dir;
        const std::string path = dir.path() + "/run.journal";
        std::atomic<int> calls{0};
        (void)run_in_threads(counting_square{&calls}, numbers(5), {.journal = path});
        const auto size = fs::file_size(path);
        {
            std::ofstream f(path, std::ios::binary | std::ios::app);
            f.write(reinterpret_cast<const char*>(tail.data()),
                    static_cast<std::streamsize>(tail.size()));
        }
        const auto garbled = read_journal(path);
        EXPECT_EQ(garbled.records.size(), 5U);
        EXPECT_EQ(garbled.valid_bytes, size);
        EXPECT_FALSE(garbled.tail_note.empty());

        (void)run_in_threads(counting_square{&calls}, numbers(5), {.journal = path});
        EXPECT_EQ(calls.load(), 5) << "nothing runs again";
        EXPECT_EQ(fs::file_size(path), size) << "the garbage is cut off";
    }
}

TEST(Journal, RecordForAnotherInput_RunsAgain) {
    // A record whose own input hash does not match the input at its index (the list's hash
    // matches): the task runs again. Written through the journal's own file class.
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    const auto inputs = numbers(3);
    std::vector<std::uint64_t> hashes;
    for (int v : inputs) {
        std::vector<std::byte> bytes;
        procpool::wire::writer w(bytes);
        procpool::wire::save(w, v);
        hashes.push_back(procpool::detail::journal_hash(bytes));
    }
    {
        procpool::detail::journal_file file(path, journal_mode::resume, false, 3,
                                            procpool::detail::journal_inputs_hash(hashes),
                                            typeid(int).name());
        std::vector<std::byte> buf;
        for (std::uint64_t i = 0; i < 3; ++i) {
            procpool::journal_record r;
            r.index = i;
            r.input_hash = i == 1 ? hashes[i] ^ 1 : hashes[i];
            r.attempts = 1;
            procpool::detail::journal_file::begin_record(buf, r);
            procpool::wire::writer w(buf);
            procpool::wire::save(w, -7);
            file.append(buf);
        }
    }
    std::atomic<int> calls{0};
    const auto out = run_in_threads(counting_square{&calls}, inputs, {.journal = path});
    EXPECT_EQ(calls.load(), 1);
    EXPECT_EQ(*out[0], -7);
    EXPECT_EQ(*out[1], 1);
    EXPECT_EQ(*out[2], -7);
}

TEST(Journal, VoidTasks_AndStringResults_RoundTrip) {
    temp_dir dir;
    std::atomic<int> calls{0};
    const std::string void_path = dir.path() + "/void.journal";
    auto touch = [&](int) { calls.fetch_add(1); };
    (void)run_in_threads(touch, numbers(4), {.journal = void_path});
    const auto again = run_in_threads(touch, numbers(4), {.journal = void_path});
    EXPECT_EQ(calls.load(), 4);
    for (const auto& o : again) EXPECT_TRUE(o);
    EXPECT_EQ(read_journal(void_path).header.result_type, "void");

    const std::string str_path = dir.path() + "/str.journal";
    auto text = [&](const std::string& s, int n) {
        calls.fetch_add(1);
        std::string r;
        for (int i = 0; i < n; ++i) r += s;
        return r;
    };
    std::vector<std::pair<std::string, int>> tasks = {{"ab", 3}, {"", 2}, {"xyz", 1}};
    (void)run_in_threads(text, tasks, {.journal = str_path});
    const auto strs = run_in_threads(text, tasks, {.journal = str_path});
    EXPECT_EQ(calls.load(), 7);
    EXPECT_EQ(*strs[0], "ababab");
    EXPECT_EQ(*strs[1], "");
    EXPECT_EQ(*strs[2], "xyz");
}

/// Neither an argument nor a result that a journal can store.
struct opaque_result {
    std::function<int()> f;
};

TEST(Journal, NotSerializable_ThrowsWithJournal_RunsWithout) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    int a = 1;
    int b = 2;
    std::vector<const int*> ptrs = {&a, &b};
    auto deref = [](const int* p) { return *p; };
    try {
        (void)run_in_threads(deref, ptrs, {.journal = path});
        ADD_FAILURE() << "no exception";
    } catch (const procpool::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("journal needs serializable task arguments and "
                                             "results"),
                  std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find("int const*"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(path));
    EXPECT_EQ(*run_in_threads(deref, ptrs)[1], 2);

    auto make = [](int i) { return opaque_result{[i] { return i; }}; };
    try {
        (void)run_in_threads(make, numbers(2), {.journal = path});
        ADD_FAILURE() << "no exception";
    } catch (const procpool::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("opaque_result"), std::string::npos) << e.what();
    }
    EXPECT_EQ(run_in_threads(make, numbers(2))[1]->f(), 1);
}

TEST(Journal, ArgumentsThatCannotBeStored_Throw) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::vector<procpool::shared_array<int>> arrays(2, procpool::shared_array<int>(4));
    auto size = [](const procpool::shared_array<int>& a) { return a.size(); };
    try {
        (void)run_in_threads(size, arrays, {.journal = path});
        ADD_FAILURE() << "no exception";
    } catch (const procpool::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("cannot store task 0's arguments"),
                  std::string::npos)
            << e.what();
    }
    EXPECT_EQ(*run_in_threads(size, arrays)[1], 4U);
}

TEST(Journal, InUseByAnotherRun_Throws) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<int> calls{0};
    bool checked = false;
    (void)run_in_threads(
        counting_square{&calls}, numbers(2),
        {.on_result =
             [&](std::size_t, const procpool::outcome<int>&) {
                 if (checked) return;
                 checked = true;
                 try {
                     (void)run_in_threads(counting_square{&calls}, numbers(2), {.journal = path});
                     ADD_FAILURE() << "no exception";
                 } catch (const procpool::invalid_argument& e) {
                     EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos)
                         << e.what();
                 }
             },
         .journal = path});
    EXPECT_TRUE(checked);
    EXPECT_EQ(calls.load(), 2);
}

TEST(Journal, RebuiltFailures_KeepKindMessageAndSignal) {
    const procpool::task_error died(3, failure_kind::worker_died,
                                    "worker died (SIGSEGV): pid 42", 2);
    EXPECT_STREQ(died.what(), "task 3 failed after 2 attempts: worker died (SIGSEGV): pid 42");
    ASSERT_NE(died.cause_as<procpool::worker_died>(), nullptr);
    EXPECT_EQ(died.cause_as<procpool::worker_died>()->signal(), SIGSEGV);
    EXPECT_STREQ(died.cause_as<procpool::worker_died>()->what(), "worker died (SIGSEGV): pid 42");

    const procpool::task_error exited(0, failure_kind::worker_died, "worker died (exit code 3)", 1);
    EXPECT_EQ(exited.cause_as<procpool::worker_died>()->exit_code(), 3);

    const procpool::task_error timed(1, failure_kind::timeout, "ran too long", 1);
    EXPECT_NE(timed.cause_as<procpool::task_timeout>(), nullptr);
    EXPECT_EQ(timed.cause_message(), "ran too long");

    const procpool::task_error odd(1, failure_kind::exception, "int", 1);
    EXPECT_EQ(odd.cause_message(), "int");
    EXPECT_EQ(odd.kind(), failure_kind::exception);
}

// --- A run killed by SIGKILL, resumed ---------------------------------------------------

constexpr int killed_tasks = 8;
constexpr int killed_at = 3;  // tasks from here on block until the process is killed

/// The child's task: leaves a marker, returns at once below `killed_at`, else blocks.
int mark_then_maybe_block(const std::string& marks, int i) {
    std::ofstream(marks + "/ran-" + std::to_string(i) + "-" + std::to_string(getpid())) << 1;
    if (i >= killed_at) {
        for (;;) std::this_thread::sleep_for(1h);
    }
    return i * i;
}

/// The child process (this binary, started with --journal-child): a run that finishes
/// tasks 0..killed_at-1, says so with a file, and then waits to be killed.
int journal_child(const std::string& journal, const std::string& marks) {
    int finished = 0;
    (void)run_in_threads([&](int i) { return mark_then_maybe_block(marks, i); },
                         numbers(killed_tasks),
                         {.workers = 2,
                          .on_result =
                              [&](std::size_t, const procpool::outcome<int>&) {
                                  // The record is written before on_result is called.
                                  if (++finished == killed_at) {
                                      std::ofstream(marks + "/../ready") << 1;
                                  }
                              },
                          .journal = journal});
    return 3;  // not reached: the test kills this process
}

TEST(Journal, ParentKilledMidRun_ResumeRunsOnlyWhatDidNotFinish) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    const std::string marks = dir.path() + "/marks";
    fs::create_directory(marks);

    const std::string self = fs::read_symlink("/proc/self/exe").string();
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        execl(self.c_str(), self.c_str(), "--journal-child", path.c_str(), marks.c_str(),
              static_cast<char*>(nullptr));
        _exit(127);
    }
    // Wait for the signal (a watchdog of minutes fails the test instead of hanging it).
    const auto until = std::chrono::steady_clock::now() + 3min;
    int status = 0;
    bool exited = false;
    while (!fs::exists(dir.path() + "/ready")) {
        if (waitpid(child, &status, WNOHANG) == child) {
            exited = true;
            break;
        }
        if (std::chrono::steady_clock::now() > until) break;
        std::this_thread::sleep_for(2ms);
    }
    if (!exited) {
        kill(child, SIGKILL);
        ASSERT_EQ(waitpid(child, &status, 0), child);
    }
    ASSERT_TRUE(fs::exists(dir.path() + "/ready"))
        << "the child never finished its first tasks (status " << status << ")";
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;

    // What the killed run left: a whole record for each task it finished.
    const auto left = read_journal(path);
    EXPECT_TRUE(left.tail_note.empty()) << left.tail_note;
    EXPECT_EQ(index_set(left.records), (std::multiset<std::uint64_t>{0, 1, 2}));
    const auto child_runs = runs_in(marks);
    for (int i = 0; i < killed_at; ++i) EXPECT_EQ(child_runs.at(i), 1) << "task " << i;

    std::mutex m;
    std::set<int> ran;
    const auto out = run_in_threads(
        [&](int i) {
            std::lock_guard lock(m);
            ran.insert(i);
            return i * i;
        },
        numbers(killed_tasks), {.workers = 2, .journal = path});
    std::set<int> rest;
    for (int i = killed_at; i < killed_tasks; ++i) rest.insert(i);
    EXPECT_EQ(ran, rest) << "the finished tasks must not run again";
    ASSERT_EQ(out.size(), static_cast<std::size_t>(killed_tasks));
    for (int i = 0; i < killed_tasks; ++i) {
        ASSERT_TRUE(out[static_cast<std::size_t>(i)]);
        EXPECT_EQ(*out[static_cast<std::size_t>(i)], i * i);
    }
    EXPECT_EQ(read_journal(path).records.size(), static_cast<std::size_t>(killed_tasks));
}

#ifdef PROCPOOL_JOURNAL_TOOL
/// Runs the procpool-journal tool; its stdout, and its stderr in `err`.
std::string run_tool(const std::string& args, const std::string& err_file, int& rc) {
    const std::string cmd =
        std::string(PROCPOOL_JOURNAL_TOOL) + " " + args + " 2>" + err_file;
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return {};
    std::string out;
    char buf[4096];
    std::size_t got = 0;
    while ((got = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, got);
    rc = pclose(p);
    return out;
}

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

TEST(JournalTool, PrintsJsonLines_Summary_AndNotesATornTail) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    const std::string err = dir.path() + "/stderr";
    std::atomic<bool> broken{true};
    std::mutex m;
    std::map<int, int> runs;
    (void)run_in_threads(flaky{&broken, &m, &runs}, numbers(4), {.journal = path});

    int rc = -1;
    std::istringstream lines(run_tool(path, err, rc));
    EXPECT_EQ(rc, 0) << slurp(err);
    std::vector<nlohmann::json> docs;
    for (std::string line; std::getline(lines, line);) docs.push_back(nlohmann::json::parse(line));
    ASSERT_EQ(docs.size(), 5U);
    EXPECT_EQ(docs[0]["tasks"], 4);
    EXPECT_EQ(docs[0]["result_type"], "int");
    std::map<int, nlohmann::json> by_index;
    for (std::size_t k = 1; k < docs.size(); ++k) by_index[docs[k]["index"].get<int>()] = docs[k];
    ASSERT_EQ(by_index.size(), 4U);
    EXPECT_EQ(by_index[2]["status"], "exception");
    EXPECT_EQ(by_index[2]["message"], "std::out_of_range: no element 2");
    EXPECT_EQ(by_index[2]["value_bytes"], 0);
    EXPECT_EQ(by_index[1]["status"], "ok");
    EXPECT_EQ(by_index[1]["value_bytes"], sizeof(int));
    EXPECT_EQ(by_index[1]["attempts"], 1);
    EXPECT_TRUE(by_index[1]["duration_ms"].is_number());
    EXPECT_TRUE(slurp(err).empty()) << slurp(err);

    const auto summary = nlohmann::json::parse(run_tool("--summary " + path, err, rc));
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(summary["tasks"], 4);
    EXPECT_EQ(summary["recorded"], 4);
    EXPECT_EQ(summary["ok"], 3);
    EXPECT_EQ(summary["failed"]["exception"], 1);
    EXPECT_TRUE(summary["total_duration_ms"].is_number());
    EXPECT_TRUE(summary["mean_duration_ms"].is_number());

    fs::resize_file(path, fs::file_size(path) - 2);
    std::istringstream torn(run_tool(path, err, rc));
    EXPECT_EQ(rc, 0);
    int count = 0;
    for (std::string line; std::getline(torn, line);) ++count;
    EXPECT_EQ(count, 4);
    EXPECT_NE(slurp(err).find("note:"), std::string::npos) << slurp(err);

    (void)run_tool(dir.path() + "/missing", err, rc);
    EXPECT_NE(rc, 0);
    EXPECT_NE(slurp(err).find("missing"), std::string::npos) << slurp(err);
}
#endif

}  // namespace

// procpool::init first, as every program with process pools must; a child started with
// --journal-child is the killed run of ParentKilledMidRun_ResumeRunsOnlyWhatDidNotFinish.
int main(int argc, char** argv) {
    if (argc == 4 && std::string(argv[1]) == "--journal-child") {
        return journal_child(argv[2], argv[3]);
    }
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
