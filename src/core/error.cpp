#include "procpool/error.hpp"

#include <cstring>
#include <string>

namespace procpool {

namespace {
std::string describe_death(int sig, int code, const std::string& detail) {
    std::string s = "worker died (";
    if (sig != 0) {
        const char* abbrev = sigabbrev_np(sig);
        s += abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
    } else {
        s += "exit code " + std::to_string(code);
    }
    s += ')';
    if (!detail.empty()) s += ": " + detail;
    return s;
}
}  // namespace

worker_died::worker_died(int signal, int exit_code, const std::string& detail)
    : error(describe_death(signal, exit_code, detail)),
      signal_(signal),
      exit_code_(signal != 0 ? -1 : exit_code) {}

}  // namespace procpool
