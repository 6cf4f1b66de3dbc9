// Per-thread objects that outlive the thread's thread_local objects and are freed when
// the thread ends (docs/architecture.md, "The queue outlives the thread's thread_local
// objects").
#pragma once

#include <pthread.h>

namespace procpool::detail {

/// A pthread key whose destructor, `FreeIt`, frees a thread's heap object when the thread
/// ends. Key destructors run after the thread's thread_local ones, and again (a few
/// rounds) after one that sets a key anew, so an object first made in a destructor that
/// runs after the thread_local objects are gone (another key's) is freed too. Such
/// objects are reached through trivially destructible thread_local pointers, usable in
/// any destructor, also a static object's at exit on the main thread (whose objects no
/// key destructor frees: they stay reachable until the process ends).
///
/// The key is made at the first `set` through pthread_once, which glibc restarts in a
/// child forked while another thread was making it (a function-local static's guard
/// would be copied "in progress" and stop the child for good).
template <void (*FreeIt)(void*) noexcept>
class thread_end_key {
  public:
    /// Frees `object` with FreeIt when the calling thread ends. Without a key (the
    /// process ran out of them) the object outlives the thread.
    static void set(void* object) noexcept {
        (void)pthread_once(&once_, make);
        if (made_) (void)pthread_setspecific(key_, object);
    }

  private:
    static void make() noexcept { made_ = pthread_key_create(&key_, FreeIt) == 0; }
    static inline pthread_once_t once_ = PTHREAD_ONCE_INIT;
    static inline pthread_key_t key_{};
    static inline bool made_ = false;
};

/// A global that is constant-initialized (no guard, no initialization order) and never
/// destroyed: usable from any destructor at exit.
template <class T>
union never_destroyed {
    T value;
    constexpr never_destroyed() : value() {}
    never_destroyed(const never_destroyed&) = delete;
    never_destroyed& operator=(const never_destroyed&) = delete;
    ~never_destroyed() {}
};

}  // namespace procpool::detail
