// Uses the installed headers and library: umbrella header, a pool, errors, as_completed.
#include <procpool/procpool.hpp>

#include <cstdio>
#include <stdexcept>
#include <vector>

int main() {
    procpool::thread_pool pool({.workers = 2});
    std::vector<int> items = {1, 2, 3, 4};
    auto squares = pool.map([](int x) { return x * x; }, items);
    if (squares != std::vector<int>{1, 4, 9, 16}) return 1;

    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 4; ++i) fs.push_back(pool.submit([i] { return i; }));
    int sum = 0;
    for (auto& f : procpool::as_completed(fs)) sum += f.get();
    if (sum != 6) return 2;

    auto failing = pool.submit([]() -> int { throw std::out_of_range("expected"); });
    try {
        (void)failing.get();
        return 3;
    } catch (const std::out_of_range&) {
    }
    try {
        procpool::thread_pool bad({.workers = 0});
        return 4;
    } catch (const procpool::error&) {
    }
    std::puts("downstream ok");
    return 0;
}
