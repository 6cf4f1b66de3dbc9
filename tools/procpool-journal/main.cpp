// procpool-journal: a run_in_* journal (run_options::journal) as JSON lines: one line for
// the header, then one per record in file order; or, with --summary, one line of counts.
// A torn or garbled tail (a run killed while writing) is reported on stderr as a note.
#include <procpool/journal.hpp>
#include <procpool/outcome.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <iostream>
#include <map>
#include <string>

namespace {

using nlohmann::json;

/// Messages come from tasks and may hold any bytes: invalid UTF-8 is replaced, not fatal.
void print(const json& j) {
    std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
}

std::string hex(std::uint64_t v) {
    char buf[19];
    std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
    return buf;
}

double ms(std::int64_t ns) { return static_cast<double>(ns) / 1e6; }

std::string status(const procpool::journal_record& r) {
    return r.failure ? procpool::to_string(*r.failure) : "ok";
}

json header_line(const std::string& path, const procpool::journal_contents& c) {
    return {{"journal", path},
            {"format_version", c.header.version},
            {"tasks", c.header.task_count},
            {"inputs_hash", hex(c.header.inputs_hash)},
            {"result_type", c.header.result_type},
            {"created_unix_ms", c.header.created_unix_ns / 1'000'000},
            {"records", c.records.size()}};
}

json record_line(const procpool::journal_record& r) {
    return {{"index", r.index},
            {"status", status(r)},
            {"message", r.message},
            {"duration_ms", ms(r.duration_ns)},
            {"attempts", r.attempts},
            {"value_bytes", r.value.size()}};
}

/// Per task, its last record counts (a task run again after a failure has several).
json summary_line(const std::string& path, const procpool::journal_contents& c) {
    std::map<std::uint64_t, const procpool::journal_record*> last;
    for (const auto& r : c.records) last[r.index] = &r;
    std::uint64_t ok = 0;
    std::int64_t total_ns = 0;
    json failed = json::object();
    for (const auto& [index, r] : last) {
        total_ns += r->duration_ns;
        if (r->ok()) {
            ++ok;
        } else {
            const std::string kind = status(*r);
            failed[kind] = failed.value(kind, 0) + 1;
        }
    }
    const std::uint64_t recorded = last.size();
    const std::uint64_t missing =
        c.header.task_count > recorded ? c.header.task_count - recorded : 0;
    return {{"journal", path},
            {"tasks", c.header.task_count},
            {"records", c.records.size()},
            {"recorded", recorded},
            {"missing", missing},
            {"ok", ok},
            {"failed", failed},
            {"total_duration_ms", ms(total_ns)},
            {"mean_duration_ms", recorded == 0 ? 0.0 : ms(total_ns) / static_cast<double>(recorded)}};
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "Prints a procpool run journal (run_options::journal) as JSON lines: the header, then "
        "one line per record {index, status, message, duration_ms, attempts, value_bytes}."};
    std::string path;
    bool summary = false;
    app.add_option("journal", path, "The journal file")->required();
    app.add_flag("--summary", summary,
                 "Print one line instead: tasks ok, failed by kind, missing, total and mean "
                 "duration (a task's last record counts)");
    CLI11_PARSE(app, argc, argv);

    try {
        const procpool::journal_contents c = procpool::read_journal(path);
        if (!c.tail_note.empty()) {
            std::cerr << "procpool-journal: note: " << path << ": " << c.tail_note << '\n';
        }
        if (summary) {
            print(summary_line(path, c));
        } else {
            print(header_line(path, c));
            for (const auto& r : c.records) print(record_line(r));
        }
    } catch (const std::exception& e) {
        std::cerr << "procpool-journal: " << e.what() << '\n';
        return 1;
    }
    return std::cout.flush() ? 0 : 1;
}
