#include "tasks.hpp"

#include <sys/resource.h>
#include <vips/vips.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace demo {

double heavy_calc(long n) {
    double s = 0;
    for (long i = 0; i < n; ++i) s += std::sqrt(static_cast<double>(i));
    return s;
}

namespace {

// libvips is set up lazily, once per worker process, on its first image task. Never in
// the parent: a parent that had started vips' thread pool before forking would hand
// its workers a copy of locks that nobody will ever release. One vips thread per worker,
// because the process pool already keeps every core busy; the operation cache is off,
// since each image is touched once.
void ensure_vips() {
    static const bool ready = [] {
        if (VIPS_INIT("procpool-demo") != 0) {
            throw std::runtime_error(std::string("cannot start libvips: ") + vips_error_buffer());
        }
        vips_concurrency_set(1);
        vips_cache_set_max(0);
        return true;
    }();
    (void)ready;
}

/// Owns one reference to a VipsImage.
class image {
public:
    image() = default;
    image(const image&) = delete;
    image& operator=(const image&) = delete;
    ~image() {
        if (p_ != nullptr) g_object_unref(p_);
    }
    VipsImage* get() const noexcept { return p_; }
    VipsImage** out() noexcept { return &p_; }

private:
    VipsImage* p_ = nullptr;
};

/// Turns a failed vips call into an exception carrying vips' own message.
void check(int rc, const std::string& what) {
    if (rc == 0) return;
    std::string msg = what + ": " + vips_error_buffer();
    vips_error_clear();
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    throw std::runtime_error(msg);
}

}  // namespace

long make_test_image(std::string path, int index, int width, int height) {
    ensure_vips();
    image xyz, x, y, red, green, noise, rgb, bytes;
    check(vips_xyz(xyz.out(), width, height, nullptr), "vips_xyz");
    check(vips_extract_band(xyz.get(), x.out(), 0, nullptr), "vips_extract_band");
    check(vips_extract_band(xyz.get(), y.out(), 1, nullptr), "vips_extract_band");
    check(vips_linear1(x.get(), red.out(), 255.0 / width, 0.0, nullptr), "vips_linear1");
    check(vips_linear1(y.get(), green.out(), 255.0 / height, 0.0, nullptr), "vips_linear1");
    check(vips_gaussnoise(noise.out(), width, height, "mean", 128.0, "sigma", 60.0, "seed", index,
                          nullptr),
          "vips_gaussnoise");
    VipsImage* bands[] = {red.get(), green.get(), noise.get()};
    check(vips_bandjoin(bands, rgb.out(), 3, nullptr), "vips_bandjoin");
    check(vips_cast_uchar(rgb.get(), bytes.out(), nullptr), "vips_cast_uchar");
    check(vips_image_write_to_file(bytes.get(), path.c_str(), "Q", 90, nullptr),
          "cannot write " + path);
    return static_cast<long>(std::filesystem::file_size(path));
}

blur_stats blur_image(std::string in, std::string out, bool crash) {
    if (crash) {
        // No core file: the crash is the point, not something to debug.
        const rlimit no_core{0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        std::raise(SIGSEGV);
    }
    const auto t0 = std::chrono::steady_clock::now();
    ensure_vips();
    image src, blurred;
    // Sequential access lets vips stream the file through the blur in strips.
    *src.out() = vips_image_new_from_file(in.c_str(), "access", VIPS_ACCESS_SEQUENTIAL, nullptr);
    check(src.get() == nullptr ? -1 : 0, "cannot read " + in);
    check(vips_gaussblur(src.get(), blurred.out(), 5.0, nullptr), "vips_gaussblur");
    check(vips_image_write_to_file(blurred.get(), out.c_str(), "Q", 90, nullptr),
          "cannot write " + out);
    const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - t0;
    return {vips_image_get_width(src.get()), vips_image_get_height(src.get()), took.count()};
}

}  // namespace demo
