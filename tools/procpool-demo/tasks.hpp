// The demo's task functions: the seed's heavy_calc and blur_image, plus the test-image
// generator. They run in worker processes, so they are plain functions with serializable
// arguments and results.
#pragma once

#include <string>

namespace demo {

/// The seed's CPU-bound task: the sum of sqrt(i) for i < n.
double heavy_calc(long n);

/// What blurring one image produced.
struct blur_stats {
    int width = 0;            ///< Pixels across.
    int height = 0;           ///< Pixels down.
    double milliseconds = 0;  ///< Time spent loading, blurring and saving, in this worker.
};

/// Writes a `width` x `height` RGB test image to `path` (a gradient with Gaussian noise,
/// seeded by `index`, so every image differs and the blur is easy to see). Returns the
/// file's size in bytes.
long make_test_image(std::string path, int index, int width, int height);

/// The seed's blur_image: loads `in`, applies a Gaussian blur of sigma 5 (the seed's
/// `ImageFilter.GaussianBlur(5)`) and writes `out`. With `crash`, the worker process
/// dies of SIGSEGV first: the demo's proof that a crash costs only its own task.
blur_stats blur_image(std::string in, std::string out, bool crash);

}  // namespace demo
