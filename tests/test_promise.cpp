// promise<T>: the producing side of a future, resolved exactly once.
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "procpool/future.hpp"

namespace {

using procpool::future;
using procpool::promise;

struct no_default {
    explicit no_default(int v) : v(v) {}
    int v;
};

struct throws_on_copy {
    throws_on_copy() = default;
    throws_on_copy(const throws_on_copy&) { throw std::length_error("copy failed"); }
};

TEST(Promise, SetValue_ResolvesTheFuture) {
    promise<std::string> p;
    auto f = p.get_future();
    EXPECT_TRUE(p.set_value("abc"));
    EXPECT_TRUE(f.ready());
    EXPECT_EQ(f.get(), "abc");
}

TEST(Promise, SetValue_ConstructsFromSeveralArguments) {
    promise<std::string> p;
    p.set_value(3u, 'x');
    EXPECT_EQ(p.get_future().get(), "xxx");
}

TEST(Promise, SetValue_NonDefaultConstructibleType) {
    promise<no_default> p;
    p.set_value(4);
    EXPECT_EQ(p.get_future().get().v, 4);
}

TEST(Promise, SetValue_MoveOnlyType) {
    promise<std::unique_ptr<int>> p;
    p.set_value(std::make_unique<int>(6));
    EXPECT_EQ(*p.get_future().get(), 6);
}

TEST(Promise, SetValue_Twice_SecondReturnsFalseAndTheFirstValueStays) {
    promise<int> p;
    EXPECT_TRUE(p.set_value(1));
    EXPECT_FALSE(p.set_value(2));
    EXPECT_FALSE(p.set_exception(std::make_exception_ptr(std::runtime_error("late"))));
    EXPECT_EQ(p.get_future().get(), 1);
}

TEST(Promise, SetValue_WhoseConstructionThrows_ResolvesWithThatError) {
    promise<throws_on_copy> p;
    const throws_on_copy original;
    EXPECT_TRUE(p.set_value(original));
    EXPECT_THROW(p.get_future().get(), std::length_error);
}

TEST(Promise, SetException_ResolvesWithTheError) {
    promise<int> p;
    auto f = p.get_future();
    EXPECT_TRUE(p.set_exception(std::make_exception_ptr(std::invalid_argument("bad"))));
    EXPECT_THROW(f.get(), std::invalid_argument);
    EXPECT_FALSE(f.cancelled());
}

TEST(Promise, VoidPromise_SetValueResolves) {
    promise<void> p;
    future<void> f = p.get_future();
    EXPECT_FALSE(f.ready());
    EXPECT_TRUE(p.set_value());
    EXPECT_TRUE(f.ready());
    f.get();
}

TEST(Promise, GetFuture_CalledTwice_GivesTheSameTask) {
    promise<int> p;
    EXPECT_TRUE(p.get_future() == p.get_future());
}

TEST(Promise, DestroyedUnresolved_ResolvesAsTaskCancelled) {
    future<int> f;
    {
        promise<int> p;
        f = p.get_future();
    }
    ASSERT_TRUE(f.ready());
    EXPECT_TRUE(f.cancelled());
    EXPECT_THROW(f.get(), procpool::task_cancelled);
}

TEST(Promise, DestroyedUnresolved_WakesAWaitingThread) {
    auto p = std::make_unique<promise<int>>();
    auto f = p->get_future();
    std::thread t([&] { p.reset(); });
    f.wait();
    t.join();
    EXPECT_THROW(f.get(), procpool::task_cancelled);
}

TEST(Promise, DestroyedAfterSetValue_KeepsTheValue) {
    future<int> f;
    {
        promise<int> p;
        f = p.get_future();
        p.set_value(11);
    }
    EXPECT_FALSE(f.cancelled());
    EXPECT_EQ(f.get(), 11);
}

TEST(Promise, MovedFrom_DestructionLeavesTheFuturePending) {
    promise<int> c;
    auto g = c.get_future();
    promise<int> d(std::move(c));
    { promise<int> empty(std::move(c)); }  // c owns nothing now: dropping it changes nothing
    EXPECT_FALSE(g.ready());
    d.set_value(1);
    EXPECT_EQ(g.get(), 1);
}

TEST(Promise, MovedInto_DroppingTheNewOwnerUnresolved_Cancels) {
    promise<int> a;
    auto f = a.get_future();
    { promise<int> owner(std::move(a)); }
    EXPECT_TRUE(f.cancelled());
}

TEST(Promise, MoveAssigned_AbandonsTheOverwrittenPromiseAsCancelled) {
    promise<int> a;
    auto old_future = a.get_future();
    promise<int> b;
    auto new_future = b.get_future();
    a = std::move(b);
    EXPECT_TRUE(old_future.cancelled());
    EXPECT_FALSE(new_future.ready());
    a.set_value(3);
    EXPECT_EQ(new_future.get(), 3);
}

TEST(Promise, CancelThroughTheFuture_MakesSetValueReturnFalse) {
    promise<int> p;
    auto f = p.get_future();
    EXPECT_TRUE(f.cancel());
    EXPECT_FALSE(p.set_value(1));
    EXPECT_THROW(f.get(), procpool::task_cancelled);
}

}  // namespace
