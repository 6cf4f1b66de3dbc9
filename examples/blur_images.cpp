// The seed's image example: blur a folder of images in worker processes with libvips.
//
//   Python:  def blur_image(path):
//                img = Image.open(path).filter(ImageFilter.GaussianBlur(5)); ...
//            results = run_in_processes(blur_image, tasks, max_workers=4)
//
// libvips: fast, streaming (images flow through in strips, never whole in memory),
// thread-safe, with a C API. Each worker starts it on its first task, with one thread,
// since the pool already keeps every core busy. The parent never starts it: workers are
// forked, and a copy of a running vips thread pool is no use to them.
#include <procpool/run.hpp>

#include <unistd.h>
#include <vips/vips.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace fs = std::filesystem;

void start_vips_once() {
    static const bool started = [] {
        if (VIPS_INIT("blur_images") != 0) throw std::runtime_error(vips_error_buffer());
        vips_concurrency_set(1);
        vips_cache_set_max(0);
        return true;
    }();
    (void)started;
}

[[noreturn]] void vips_failed(const std::string& what) {
    std::string msg = what + ": " + vips_error_buffer();
    vips_error_clear();
    throw std::runtime_error(msg);
}

// Writes a noisy test image, so that the example needs no input files.
int make_image(std::string path, int seed) {
    start_vips_once();
    VipsImage* noise = nullptr;
    VipsImage* bytes = nullptr;
    if (vips_gaussnoise(&noise, 640, 480, "mean", 128.0, "sigma", 60.0, "seed", seed, nullptr) !=
            0 ||
        vips_cast_uchar(noise, &bytes, nullptr) != 0 ||
        vips_image_write_to_file(bytes, path.c_str(), nullptr) != 0) {
        if (noise) g_object_unref(noise);
        if (bytes) g_object_unref(bytes);
        vips_failed("cannot make " + path);
    }
    g_object_unref(noise);
    g_object_unref(bytes);
    return seed;
}

// The seed's blur_image: returns a status line, as the seed does.
std::string blur_image(std::string in, std::string out) {
    start_vips_once();
    VipsImage* src =
        vips_image_new_from_file(in.c_str(), "access", VIPS_ACCESS_SEQUENTIAL, nullptr);
    if (src == nullptr) vips_failed("cannot read " + in);
    VipsImage* blurred = nullptr;
    const bool ok = vips_gaussblur(src, &blurred, 5.0, nullptr) == 0 &&
                    vips_image_write_to_file(blurred, out.c_str(), nullptr) == 0;
    g_object_unref(src);
    if (blurred) g_object_unref(blurred);
    if (!ok) vips_failed("cannot blur " + in);
    return in + " done";
}

int main(int argc, char** argv) {
    procpool::init(argc, argv);

    const fs::path dir =
        fs::temp_directory_path() / ("procpool-blur-example-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::vector<std::tuple<std::string, int>> make;
    std::vector<std::tuple<std::string, std::string>> blur;
    for (int i = 0; i < 10; ++i) {
        const std::string name = "img_" + std::to_string(i) + ".png";
        make.emplace_back((dir / name).string(), i);
        blur.emplace_back((dir / name).string(), (dir / ("blurred_" + name)).string());
    }

    for (const auto& m : procpool::run_in_processes(make_image, make, {.workers = 4})) {
        if (!m) std::printf("%s\n", m.error().what());  // its blur will fail and say why
    }
    auto results =
        procpool::run_in_processes(blur_image, blur, {.workers = 4, .show_progress = true});

    int failed = 0;
    for (const auto& r : results) {
        std::printf("%s\n", r ? r->c_str() : r.error().what());
        failed += r ? 0 : 1;
    }
    fs::remove_all(dir);
    return failed == 0 ? 0 : 1;
}
