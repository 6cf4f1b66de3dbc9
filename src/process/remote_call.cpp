#include "procpool/detail/remote_call.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <typeinfo>

#include "process/protocol.hpp"

namespace procpool::detail {

void code_anchor() noexcept {
    // Its address is the reference point for code offsets; it must not be folded away.
    asm volatile("");
}

std::string type_name_of(const std::type_info& t) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> name(
        abi::__cxa_demangle(t.name(), nullptr, nullptr, &status), std::free);
    return status == 0 && name ? std::string(name.get()) : std::string(t.name());
}

void encode_message(wire::writer& out, const std::string& msg) { wire::save(out, msg); }

std::string decode_message(wire::reader& in) { return wire::load<std::string>(in); }

void encode_current_exception(wire::writer& out) {
    std::string type = "unknown exception";
    std::string what;
    if (const std::type_info* t = abi::__cxa_current_exception_type()) type = type_name_of(*t);
    try {
        throw;
    } catch (const std::exception& e) {
        what = e.what();
    } catch (...) {
        what = "non-std exception of type " + type;
    }
    wire::save(out, type);
    wire::save(out, what);
}

std::exception_ptr decode_exception(wire::reader& in) {
    std::string type = wire::load<std::string>(in);
    std::string what = wire::load<std::string>(in);
    return std::make_exception_ptr(remote_exception(std::move(type), std::move(what)));
}

}  // namespace procpool::detail

namespace procpool::process {

std::vector<std::byte> encode_config(const worker_config& c) {
    std::vector<std::byte> out;
    wire::writer w(out);
    wire::save_all(w, c.anchor, c.ring_capacity, c.max_tasks, c.memory_limit, c.shared_threshold,
                   c.env, c.init_invoker, c.init_fn, c.init_args);
    return out;
}

worker_config decode_config(const std::byte* p, std::size_t n) {
    wire::reader r(p, n);
    worker_config c;
    std::tie(c.anchor, c.ring_capacity, c.max_tasks, c.memory_limit, c.shared_threshold, c.env,
             c.init_invoker, c.init_fn, c.init_args) =
        wire::load_all<std::uint64_t, std::uint32_t, std::int32_t, std::uint64_t, std::uint64_t,
                       std::vector<std::pair<std::string, std::string>>, std::uint64_t,
                       std::uint64_t, std::vector<std::byte>>(r);
    return c;
}

}  // namespace procpool::process
