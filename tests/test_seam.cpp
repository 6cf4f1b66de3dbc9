// The remote-execution seam, proven by a second transport: inproc_executor (tests/inproc/)
// runs tasks through the same envelope, front (remote_executor) and worker loop
// (remote::serve) as process_pool, in threads of this process. The same futures, map,
// run_in and error tests pass on it.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "inproc/inproc_executor.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/run.hpp"
#include "procpool/shared_array.hpp"
#include "procpool/thread_pool.hpp"

namespace {

using procpool_test::inproc_executor;

static_assert(procpool::executor<inproc_executor>);
static_assert(procpool::executor<procpool::process_pool>);
static_assert(procpool::executor<procpool::thread_pool>);
static_assert(procpool::timed_executor<procpool::process_pool>);
static_assert(!procpool::timed_executor<procpool::thread_pool>);
static_assert(!procpool::executor<int>);
// A wrapper that only forwards submit (no workers(), no shutdown) is an executor too.
struct submit_only {
    template <class F, class... A>
    procpool::future<procpool::task_result_t<F, A...>> submit(F&&, A&&...);
};
static_assert(procpool::executor<submit_only>);
static_assert(!procpool::timed_executor<submit_only>);

int add(int a, int b) {
    return a + b;
}
std::string greet(std::string who) {
    return "hello, " + who;
}
int counter = 0;
void bump(int by) {
    counter += by;
}
int fails(int) {
    throw std::invalid_argument("no such input");
}
int fails_on_seven(int x) {
    if (x == 7) throw std::out_of_range("seven");
    return x * x;
}
int add_one_squared(int x) {
    return (x + 1) * (x + 1);
}
double sum(std::vector<double> xs) {
    return std::accumulate(xs.begin(), xs.end(), 0.0);
}
std::vector<double> ramp(int n) {
    std::vector<double> v(static_cast<std::size_t>(n));
    std::iota(v.begin(), v.end(), 0.0);
    return v;
}
void scale(procpool::shared_span<double> xs, double k) {
    for (double& x : xs) x *= k;
}
double read_sum(procpool::shared_span<const double> xs) {
    return std::accumulate(xs.begin(), xs.end(), 0.0);
}
struct refuses_to_travel {
    template <class Archive>
    void serialize(Archive&) {
        throw std::runtime_error("refuses_to_travel cannot be serialized");
    }
};
int take_it(refuses_to_travel) {
    return 1;
}

// The same tests run on process_pool (rings, worker processes) and on inproc_executor
// (a queue, threads): both go through remote_executor, the envelope and remote::serve.
template <class Ex>
std::unique_ptr<Ex> make_executor(int workers, std::size_t bulk = std::size_t{1} << 20) {
    if constexpr (std::is_same_v<Ex, procpool::process_pool>) {
        return std::make_unique<Ex>(
            procpool::process_pool_options{.workers = workers, .shared_memory_threshold = bulk});
    } else {
        return std::make_unique<Ex>(workers, bulk);
    }
}

template <class Ex>
class BothExecutors : public ::testing::Test {};
using executors = ::testing::Types<inproc_executor, procpool::process_pool>;
TYPED_TEST_SUITE(BothExecutors, executors);

TYPED_TEST(BothExecutors, Submit_ValuesCrossThroughTheEnvelope) {
    auto owner = make_executor<TypeParam>(2);
    auto& ex = *owner;
    auto a = ex.submit(add, 2, 3);
    auto b = ex.submit(greet, "seam");  // a C string travels as std::string
    auto c = ex.submit(procpool::task_options{}, add, 40, 2);
    EXPECT_EQ(a.get(), 5);
    EXPECT_EQ(b.get(), "hello, seam");
    EXPECT_EQ(c.get(), 42);
}

TEST(InprocExecutor, VoidTask_Resolves) {
    inproc_executor ex(1);
    counter = 0;
    ex.submit(bump, 5).get();
    EXPECT_EQ(counter, 5);  // same process: the effect is visible
}

TYPED_TEST(BothExecutors, TaskException_ArrivesAsRemoteException_WithTypeAndMessage) {
    auto owner = make_executor<TypeParam>(1);
    auto& ex = *owner;
    auto f = ex.submit(fails, 1);
    try {
        f.get();
        FAIL() << "no exception";
    } catch (const procpool::remote_exception& e) {
        EXPECT_EQ(e.type_name(), "std::invalid_argument");
        EXPECT_NE(std::string(e.what()).find("no such input"), std::string::npos);
    }
    EXPECT_EQ(ex.submit(add, 1, 1).get(), 2);  // the worker keeps serving
}

TYPED_TEST(BothExecutors, UnserializableArgument_FailsItsFuture_NotTheExecutor) {
    auto owner = make_executor<TypeParam>(1);
    auto& ex = *owner;
    auto f = ex.submit(take_it, refuses_to_travel{});
    EXPECT_THROW(f.get(), procpool::serialization_error);
    EXPECT_EQ(ex.submit(add, 2, 2).get(), 4);
}

TYPED_TEST(BothExecutors, Map_ResultsInInputOrder_FirstErrorInInputOrder) {
    auto owner = make_executor<TypeParam>(3);
    auto& ex = *owner;
    std::vector<int> xs(100);
    std::iota(xs.begin(), xs.end(), 10);
    const auto out = ex.map(add_one_squared, xs, 7);
    ASSERT_EQ(out.size(), xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) EXPECT_EQ(out[i], (xs[i] + 1) * (xs[i] + 1));

    std::vector<int> ys(20);
    std::iota(ys.begin(), ys.end(), 0);
    EXPECT_THROW(ex.map(fails_on_seven, ys, 3), procpool::remote_exception);
}

TYPED_TEST(BothExecutors, Imap_StreamsInOrderOrAsCompleted_ErrorsEndTheStream) {
    auto owner = make_executor<TypeParam>(2);
    auto& ex = *owner;
    std::vector<int> xs(100);
    std::iota(xs.begin(), xs.end(), 0);
    std::vector<int> in_order;
    for (int v : ex.imap(add_one_squared, xs, {.chunksize = 7, .max_in_flight = 3})) {
        in_order.push_back(v);
    }
    EXPECT_EQ(in_order, ex.map(add_one_squared, xs, 7));
    std::vector<int> as_completed;
    for (int v : ex.imap_unordered(add_one_squared, xs, {.chunksize = 3})) {
        as_completed.push_back(v);
    }
    std::sort(as_completed.begin(), as_completed.end());
    EXPECT_EQ(as_completed, in_order);
    auto failing = ex.imap(fails_on_seven, xs, {.chunksize = 1});
    EXPECT_THROW(
        {
            for (int v : failing) EXPECT_LT(v, 49);
        },
        procpool::remote_exception);
    EXPECT_TRUE(failing.begin() == failing.end());
}

TYPED_TEST(BothExecutors, BigVectors_TravelAsAttachments_BothWays) {
    auto owner = make_executor<TypeParam>(2, 4096);
    auto& ex = *owner;  // vectors of 4 KiB and more go out of band
    std::vector<double> big(1 << 16, 0.5);
    EXPECT_DOUBLE_EQ(ex.submit(sum, big).get(), 0.5 * (1 << 16));
    const auto back = ex.submit(ramp, 100000).get();
    ASSERT_EQ(back.size(), 100000u);
    EXPECT_DOUBLE_EQ(back[99999], 99999.0);
}

// A big argument vector is copied into its block after its task is sent (the worker copies
// it out meanwhile), except for a task with a deadline, which starts when the task is sent.
TEST(InprocExecutor, BigArgument_CopiedInAfterTheSend_UnlessTheTaskHasADeadline) {
    inproc_executor ex(1, 4096);
    std::vector<double> big(1 << 16, 0.5);
    EXPECT_DOUBLE_EQ(ex.submit(sum, big).get(), 0.5 * (1 << 16));
    EXPECT_EQ(ex.blocks_unwritten_at_send(), 1u) << "sent before its bytes";
    EXPECT_DOUBLE_EQ(
        ex.submit(procpool::task_options{.timeout = std::chrono::minutes(5)}, sum, big).get(),
        0.5 * (1 << 16));
    EXPECT_EQ(ex.blocks_unwritten_at_send(), 1u) << "a deadline: written before the send";
    ex.copy_bulk_before_send();  // as a pool with a task_timeout for every task
    EXPECT_DOUBLE_EQ(ex.submit(sum, big).get(), 0.5 * (1 << 16));
    EXPECT_EQ(ex.blocks_unwritten_at_send(), 1u) << "every task has a deadline";
}

TYPED_TEST(BothExecutors, SharedArrays_AreAttachedNotCopied) {
    auto owner = make_executor<TypeParam>(1);
    auto& ex = *owner;
    procpool::shared_array<double> xs(1000);
    for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = 1.0;
    ex.submit(scale, xs, 3.0).get();
    EXPECT_DOUBLE_EQ(xs[999], 3.0);
    EXPECT_DOUBLE_EQ(ex.submit(read_sum, xs).get(), 3000.0);
}

TYPED_TEST(BothExecutors, RunIn_CollectsOutcomesInOrder_FailuresAsValues) {
    auto owner = make_executor<TypeParam>(2);
    auto& ex = *owner;
    const auto out = procpool::run_in(ex, fails_on_seven, std::vector{5, 6, 7, 8});
    ASSERT_EQ(out.size(), 4u);
    EXPECT_EQ(out[0].value(), 25);
    EXPECT_EQ(out[1].value(), 36);
    ASSERT_FALSE(out[2]);
    EXPECT_NE(std::string(out[2].error().what()).find("seven"), std::string::npos);
    EXPECT_EQ(out[3].value(), 64);
}

TEST(InprocExecutor, EveryWorkerReportsReady_ThenOneReplyPerTask) {
    inproc_executor ex(3);
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 10; ++i) fs.push_back(ex.submit(add, i, i));
    for (int i = 0; i < 10; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), 2 * i);
    ex.shutdown();
    EXPECT_EQ(ex.replies(), 3u + 10u);
}

TYPED_TEST(BothExecutors, SubmitAfterShutdown_Throws) {
    auto owner = make_executor<TypeParam>(1);
    auto& ex = *owner;
    ex.shutdown();
    EXPECT_THROW(static_cast<void>(ex.submit(add, 1, 2)), procpool::pool_shut_down);
}

}  // namespace

// ---- the envelope's start-up handshake -------------------------------------------------

namespace {

using procpool::remote::worker_config;

TEST(Envelope, BuildId_IsTheLinkersNote_AndStable) {
    const std::string& id = procpool::remote::program_build_id();
    ASSERT_EQ(id.rfind("gnu:", 0), 0u) << id;  // procpool's CMake target links --build-id
    EXPECT_GE(id.size(), 4u + 16u);
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef", 4), std::string::npos) << id;
    EXPECT_EQ(&procpool::remote::program_build_id(), &id);
}

TEST(Envelope, SameBinary_RefusesAnotherBuildOrAnotherAddress) {
    worker_config cfg;
    cfg.build_id = procpool::remote::program_build_id();
    cfg.anchor = reinterpret_cast<std::uintptr_t>(&procpool::detail::code_anchor);
    EXPECT_TRUE(procpool::remote::same_binary(cfg));
    worker_config other_build = cfg;
    other_build.build_id = "gnu:00";
    EXPECT_FALSE(procpool::remote::same_binary(other_build));
    worker_config moved = cfg;
    moved.anchor += 16;
    EXPECT_FALSE(procpool::remote::same_binary(moved));
}

TEST(Envelope, Config_RoundTrips_AndGarbageIsASerializationError) {
    worker_config cfg;
    cfg.build_id = "gnu:abcdef";
    cfg.anchor = 42;
    cfg.max_tasks = 7;
    cfg.env = {{"OMP_NUM_THREADS", "1"}};
    cfg.init_args = {std::byte{1}, std::byte{2}};
    const auto bytes = procpool::remote::encode_config(cfg);
    const worker_config back = procpool::remote::decode_config(bytes.data(), bytes.size());
    EXPECT_EQ(back.build_id, cfg.build_id);
    EXPECT_EQ(back.anchor, 42u);
    EXPECT_EQ(back.max_tasks, 7);
    EXPECT_EQ(back.env, cfg.env);
    EXPECT_EQ(back.init_args, cfg.init_args);
    const std::byte junk[3] = {std::byte{0xff}, std::byte{0xff}, std::byte{0xff}};
    EXPECT_THROW(procpool::remote::decode_config(junk, sizeof junk), procpool::serialization_error);
}

TEST(Envelope, StartupReport_NamesTheStepAndErrno) {
    using procpool::remote::startup_step;
    const procpool::remote::startup_report r{procpool::remote::startup_report_tag,
                                             static_cast<std::uint32_t>(startup_step::map_region),
                                             ENOMEM, 0};
    const std::string what = procpool::remote::describe_startup(r);
    EXPECT_NE(what.find("mapping its shared region failed"), std::string::npos) << what;
    EXPECT_NE(what.find(std::strerror(ENOMEM)), std::string::npos) << what;
    const procpool::remote::startup_report wrong{
        procpool::remote::startup_report_tag,
        static_cast<std::uint32_t>(startup_step::wrong_binary), 0, 0};
    EXPECT_NE(procpool::remote::describe_startup(wrong).find("different build"), std::string::npos);
}

}  // namespace
