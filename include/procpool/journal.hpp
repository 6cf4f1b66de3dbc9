// The journal of a run_in_* call: every task's final outcome, appended to a file as it
// arrives, so that a run killed half-way (or one with failures) can be resumed without
// running again what already finished. `run_options::journal` turns it on; `read_journal`
// reads one back (the `procpool-journal` tool prints it as JSON lines).
//
// The file (native byte order, like the wire format: it is read back on the machine type
// that wrote it) is an 8-byte magic followed by frames, each
// `u64 payload size | payload | u64 check`, where `check` is the 64-bit FNV-1a hash of
// the size and payload bytes. The first frame is the header (format version, task count,
// a hash of the whole input list, the result type's name, creation time); every other
// frame is one task's record (input index, a hash of that input's wire bytes, status,
// message, duration, attempts, then the value's wire bytes). A frame that is cut short or
// whose check does not match ends the journal: it and whatever follows are ignored, and
// cut off before the next run appends.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "procpool/error.hpp"
#include "procpool/outcome.hpp"
#include "procpool/wire.hpp"

namespace procpool {

/// What a `run_in_*` call does with a journal file that already holds records (see
/// `run_options::journal`). A missing or empty file is simply started.
enum class journal_mode : std::uint8_t {
    /// Reuse the stored successes; run again the tasks that failed or have no record (GNU
    /// parallel's `--resume-failed`).
    resume,
    /// Reuse the stored failures as well, so only tasks without a record run (GNU
    /// parallel's `--resume`). Cancelled and shut-down tasks are run again all the same:
    /// their records say nothing about the task itself.
    resume_keep_failures,
    /// Empty the file and run every task.
    restart,
};

/// A journal's header: what run it belongs to.
struct journal_header {
    /// The file format's version (1).
    std::uint32_t version = 0;
    /// How many tasks the run has.
    std::uint64_t task_count = 0;
    /// A 64-bit hash of every input's wire bytes, in order: a different input list
    /// (another order included) has, with near certainty, another hash.
    std::uint64_t inputs_hash = 0;
    /// The tasks' result type, demangled (`int`, `std::vector<double, ...>`, `void`).
    std::string result_type;
    /// When the journal was started (`std::chrono::system_clock`, ns since the epoch).
    std::int64_t created_unix_ns = 0;
};

/// One task's final outcome as a journal stores it.
struct journal_record {
    /// The task's position in the input list.
    std::uint64_t index = 0;
    /// The 64-bit hash of the task's input's wire bytes.
    std::uint64_t input_hash = 0;
    /// Why it failed; empty for a task that produced a value.
    std::optional<failure_kind> failure;
    /// The failure's `task_error::cause_message()`; empty for successes.
    std::string message;
    /// From the task's first submission to its final outcome, in nanoseconds, as the
    /// calling thread saw it: time queued in the pool counts (with `max_in_flight` at most
    /// `workers` that is close to the run time). Zero for tasks that were never started.
    std::int64_t duration_ns = 0;
    /// How many times the task was started (1 + its retries; 0 if never started).
    std::uint32_t attempts = 0;
    /// The value in wire format (`procpool::wire::load<R>` reads it); empty for failures
    /// and `void` tasks.
    std::vector<std::byte> value;

    /// True for a task that produced a value.
    bool ok() const noexcept { return !failure.has_value(); }
};

/// A journal file's contents, as `read_journal` found them.
struct journal_contents {
    /// The header.
    journal_header header;
    /// Every whole record, in the order they were written. A task run again after a
    /// failure has several; the last one counts.
    std::vector<journal_record> records;
    /// Bytes up to the end of the last whole record.
    std::uint64_t valid_bytes = 0;
    /// The file's size: larger than `valid_bytes` when it ends in a torn or garbled record.
    std::uint64_t file_bytes = 0;
    /// Why the bytes after `valid_bytes` were ignored (e.g. the writer was killed
    /// mid-record); empty when the file ends with a whole record.
    std::string tail_note;
};

/// Reads the journal at `path` without changing it (a run may be appending meanwhile; a
/// record it is in the middle of writing shows as `tail_note`). Throws
/// `procpool::invalid_argument` for a file that is not a journal (or has no whole header
/// yet) and `procpool::error` when it cannot be read.
journal_contents read_journal(const std::string& path);

namespace detail {

/// The 64-bit FNV-1a hash of `bytes`, continuing from `seed`.
std::uint64_t journal_hash(std::span<const std::byte> bytes,
                           std::uint64_t seed = 0xcbf29ce484222325ULL) noexcept;

/// The hash of a whole input list from its inputs' hashes (count included).
std::uint64_t journal_inputs_hash(std::span<const std::uint64_t> input_hashes) noexcept;

/// Throws `invalid_argument` saying that a journal needs the type named `mangled` to be
/// serializable.
[[noreturn]] void journal_needs_serializable(const char* mangled);

/// Throws `invalid_argument` saying that task `index`'s arguments failed to serialize
/// (`why`), so a journal cannot tell them apart (a `shared_array` cannot be stored).
[[noreturn]] void journal_cannot_save(std::size_t index, const char* why);

/// A journal opened for appending, locked against other runs for as long as it is open.
/// Opening checks the existing header against this run's (throwing `invalid_argument`
/// naming what differs), or writes a new one; a torn tail is cut off.
class journal_file {
public:
    /// Opens or creates `path` for a run of `task_count` tasks with these inputs and
    /// result type (`result_mangled`: `typeid(R).name()`). `sync`: fdatasync each record.
    journal_file(const std::string& path, journal_mode mode, bool sync, std::uint64_t task_count,
                 std::uint64_t inputs_hash, const char* result_mangled);
    journal_file(const journal_file&) = delete;
    journal_file& operator=(const journal_file&) = delete;
    ~journal_file();

    /// For each task, the position in `records()` of its stored record that `mode` lets
    /// this run reuse (the last one for the task, if its input hash matches), or
    /// `no_record`.
    std::vector<std::size_t> reusable(std::span<const std::uint64_t> input_hashes,
                                      journal_mode mode) const;
    /// `reusable`'s "nothing stored".
    static constexpr std::size_t no_record = std::numeric_limits<std::size_t>::max();

    /// The whole records the file held when opened (none after `restart`).
    std::vector<journal_record>& records() noexcept { return records_; }

    /// Starts a record in `buf` (cleared first): the frame's size field, then the fields
    /// up to the value. The caller appends the value's wire bytes, then calls `append`.
    static void begin_record(std::vector<std::byte>& buf, const journal_record& r);
    /// Frames the record `begin_record` started in `buf` and appends it with one write
    /// (then fdatasync with `sync`). Throws `procpool::error` if the write fails.
    void append(std::vector<std::byte>& buf);

private:
    int fd_ = -1;
    std::string path_;
    bool sync_ = false;
    std::uint64_t size_ = 0;  // bytes of whole frames in the file
    std::vector<journal_record> records_;
};

/// A `run_in_*` call's side of its journal: `drive` asks it for stored outcomes before
/// launching a task, tells it when a task launches, and hands it every final outcome.
/// Inactive (every call a no-op) when the path is empty.
template <class R>
class run_journal {
    /// `R` can be journaled; otherwise the journal stays closed and no code saves an `R`.
    static constexpr bool storable_result =
        wire::is_serializable_v<std::conditional_t<std::is_void_v<R>, int, R>>;

public:
    /// Opens `path` (empty: no journal) for the tasks `elems`, whose wire bytes it hashes.
    template <class Elems>
    run_journal(const std::string& path, journal_mode mode, bool sync, const Elems& elems) {
        if (path.empty()) return;
        using V = std::ranges::range_value_t<Elems>;
        if constexpr (!wire::is_serializable_v<V>) {
            journal_needs_serializable(typeid(V).name());
        } else if constexpr (!storable_result) {
            journal_needs_serializable(typeid(R).name());
        } else {
            const std::size_t n = std::ranges::size(elems);
            hashes_.reserve(n);
            for (auto&& e : elems) {
                const V& v = e;
                buf_.clear();
                wire::writer w(buf_);
                try {
                    wire::save(w, v);
                } catch (const serialization_error& x) {
                    journal_cannot_save(hashes_.size(), x.what());
                }
                hashes_.push_back(journal_hash(buf_));
            }
            file_ = std::make_unique<journal_file>(path, mode, sync, n,
                                                   journal_inputs_hash(hashes_), typeid(R).name());
            stored_ = file_->reusable(hashes_, mode);
            started_.assign(n, 0);
            restored_.assign(n, false);
        }
    }

    /// True when the run has a journal.
    bool active() const noexcept { return file_ != nullptr; }

    /// Task `i`'s outcome from the journal, if it has a reusable one (each only once);
    /// empty if the task must run (also when its stored value no longer decodes).
    std::optional<outcome<R>> restore(std::size_t i) {
        if (!file_ || stored_[i] == journal_file::no_record) return std::nullopt;
        journal_record& r = file_->records()[std::exchange(stored_[i], journal_file::no_record)];
        std::optional<outcome<R>> o;
        if (r.failure) {
            // A count past int's range (only a damaged or forged record has one) would
            // turn negative.
            const auto attempts = static_cast<int>(
                std::min<std::uint32_t>(r.attempts, std::numeric_limits<int>::max()));
            o.emplace(task_error(i, *r.failure, std::move(r.message), attempts));
        } else if constexpr (std::is_void_v<R>) {
            if (r.value.empty()) o.emplace(i, std::in_place);
        } else if constexpr (storable_result) {
            try {
                wire::reader in(r.value);
                R v = wire::load<R>(in);
                if (in.remaining() == 0) o.emplace(i, std::in_place, std::move(v));
            } catch (const serialization_error&) {
                // A value this build cannot read back: run the task again.
            }
        }
        r.value = {};
        restored_[i] = o.has_value();
        return o;
    }

    /// Task `i` is submitted for the first time: its duration counts from now.
    void launched(std::size_t i) {
        if (file_ && started_[i] == 0) started_[i] = std::max<std::int64_t>(1, now_ns());
    }

    /// Task `i` has its final outcome `o` after `attempts` starts: appends its record
    /// (not for outcomes `restore` gave). A value whose serializer throws is not recorded
    /// (the task runs again on resume). Throws `procpool::error` if the write fails.
    void finished(std::size_t i, const outcome<R>& o, int attempts) {
        if (!file_ || restored_[i]) return;
        journal_record r;
        r.index = i;
        r.input_hash = hashes_[i];
        r.attempts = static_cast<std::uint32_t>(std::max(0, attempts));
        r.duration_ns = started_[i] == 0 ? 0 : now_ns() - started_[i];
        if (!o.has_value()) {
            r.failure = o.error().kind();
            r.message = o.error().cause_message();
        }
        journal_file::begin_record(buf_, r);
        if constexpr (!std::is_void_v<R> && storable_result) {
            if (o.has_value()) {
                wire::writer w(buf_);
                try {
                    wire::save(w, *o);
                } catch (const serialization_error&) {
                    return;
                }
            }
        }
        file_->append(buf_);
    }

private:
    static std::int64_t now_ns() noexcept {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::steady_clock::now().time_since_epoch())
            .count();
    }

    std::unique_ptr<journal_file> file_;
    std::vector<std::uint64_t> hashes_;   // each input's wire-bytes hash
    std::vector<std::size_t> stored_;     // task -> reusable record, or no_record
    std::vector<std::int64_t> started_;   // task -> first launch (steady ns), 0: not yet
    std::vector<bool> restored_;          // task's outcome came from the journal
    std::vector<std::byte> buf_;          // scratch: input bytes, then each record
};

}  // namespace detail

}  // namespace procpool
