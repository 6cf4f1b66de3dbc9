// Writes the sample traces of tests/trace_sample.hpp as files, for the ctest checks that
// parse them with Python and render the SVG with rsvg-convert:
//     trace_sample DIR  ->  DIR/trace.json DIR/timeline.svg DIR/timeline_many.svg
//                           DIR/timeline_empty.svg (DIR is created if need be)
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include "procpool/trace.hpp"
#include "trace_sample.hpp"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    try {
        std::filesystem::create_directories(dir);
        procpool::trace_recorder sample;
        procpool_test::fill_sample(sample);
        sample.save_chrome_json(dir + "/trace.json");
        sample.save_svg(dir + "/timeline.svg", {.title = "sample <trace> & \"friends\""});

        procpool::trace_recorder many;
        procpool_test::fill_many(many);
        many.save_svg(dir + "/timeline_many.svg", {.title = "5000 tasks"});

        procpool::trace_recorder empty;
        empty.save_svg(dir + "/timeline_empty.svg");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "trace_sample: %s\n", e.what());
        return 1;
    }
    std::printf("trace_sample: wrote %s/{trace.json,timeline.svg,timeline_many.svg,"
                "timeline_empty.svg}\n",
                dir.c_str());
    return 0;
}
