#include "procpool/detail/remote_call.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <typeinfo>

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

void encode_message(wire::writer& out, const std::string& msg) {
    wire::save(out, msg);
}

std::string decode_message(wire::reader& in) {
    return wire::load<std::string>(in);
}

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
