#include "mpi/messages.hpp"

#include <cstring>
#include <tuple>

#include "procpool/error.hpp"
#include "procpool/wire.hpp"

namespace procpool::mpi_impl {

std::vector<std::byte> encode(const open_msg& m) {
    std::vector<std::byte> out;
    wire::writer w(out);
    wire::save_all(w, m.pool, m.workers, m.max_tasks_per_child, m.memory_limit, m.env,
                   m.init_invoker, m.init_fn, m.init_args);
    return out;
}

open_msg decode_open(const std::byte* p, std::size_t n) {
    wire::reader r(p, n);
    open_msg m;
    std::tie(m.pool, m.workers, m.max_tasks_per_child, m.memory_limit, m.env, m.init_invoker,
             m.init_fn, m.init_args) =
        wire::load_all<std::uint32_t, std::int32_t, std::int32_t, std::uint64_t,
                       std::vector<std::pair<std::string, std::string>>, std::uint64_t,
                       std::uint64_t, std::vector<std::byte>>(r);
    return m;
}

std::vector<std::byte> encode(const opened_msg& m) {
    std::vector<std::byte> out;
    wire::writer w(out);
    wire::save_all(w, m.pool, m.workers, m.host, m.error);
    return out;
}

opened_msg decode_opened(const std::byte* p, std::size_t n) {
    wire::reader r(p, n);
    opened_msg m;
    std::tie(m.pool, m.workers, m.host, m.error) =
        wire::load_all<std::uint32_t, std::int32_t, std::string, std::string>(r);
    return m;
}

namespace {
template <class H>
void append_record(std::vector<std::byte>& out, const H& h, const std::byte* body, std::size_t n) {
    const std::size_t at = out.size();
    out.resize(at + sizeof h + n);
    std::memcpy(out.data() + at, &h, sizeof h);
    if (n != 0) std::memcpy(out.data() + at + sizeof h, body, n);
}
}  // namespace

void append(std::vector<std::byte>& out, task_msg h, const std::byte* body, std::size_t n) {
    h.args_len = n;
    append_record(out, h, body, n);
}

void append(std::vector<std::byte>& out, reply_msg h, const std::byte* body, std::size_t n) {
    h.body_len = n;
    append_record(out, h, body, n);
}

void throw_bad_batch(std::size_t at, std::size_t n) {
    throw serialization_error("MPI batch message: a record at byte " + std::to_string(at) +
                              " runs past its end (" + std::to_string(n) + " bytes)");
}

template <class H>
H read_header(const std::byte* p, std::size_t n) {
    if (n < sizeof(H)) {
        throw serialization_error("MPI message shorter than its header (" + std::to_string(n) +
                                  " < " + std::to_string(sizeof(H)) + " bytes)");
    }
    H h;
    std::memcpy(&h, p, sizeof h);
    return h;
}
template task_msg read_header<task_msg>(const std::byte*, std::size_t);
template reply_msg read_header<reply_msg>(const std::byte*, std::size_t);

std::vector<std::byte> encode_u64(std::uint64_t v) {
    std::vector<std::byte> out(sizeof v);
    std::memcpy(out.data(), &v, sizeof v);
    return out;
}

std::uint64_t decode_u64(const std::byte* p, std::size_t n) {
    return read_header<std::uint64_t>(p, n);
}

}  // namespace procpool::mpi_impl
