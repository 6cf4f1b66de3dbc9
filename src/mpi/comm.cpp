#include "mpi/comm.hpp"

#include <unistd.h>

#include <climits>
#include <string>
#include <utility>

#include "procpool/error.hpp"

namespace procpool::mpi_impl {

void check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = 0;
    throw error(std::string("procpool: ") + what + " failed: " + std::string(text, len));
}

std::string host_name() {
    char buf[HOST_NAME_MAX + 1] = {};
    if (gethostname(buf, sizeof buf - 1) != 0) return "unknown-host";
    return buf;
}

void comm::send(int dest, int tag, std::vector<std::byte> body) {
    if (body.size() > static_cast<std::size_t>(INT_MAX)) {
        throw serialization_error("a message of " + std::to_string(body.size()) +
                                  " bytes is larger than one MPI message can be (2 GiB)");
    }
    sends_.push_back({MPI_REQUEST_NULL, std::move(body)});
    pending_send& s = sends_.back();
    const int rc = MPI_Isend(s.body.data(), static_cast<int>(s.body.size()), MPI_BYTE, dest, tag,
                             c_, &s.req);
    if (rc != MPI_SUCCESS) {
        sends_.pop_back();
        check(rc, "MPI_Isend");
    }
}

bool comm::try_receive(int source, message& out) {
    int flag = 0;
    MPI_Status st;
    check(MPI_Iprobe(source, MPI_ANY_TAG, c_, &flag, &st), "MPI_Iprobe");
    if (flag == 0) return false;
    int count = 0;
    check(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count");
    out.source = st.MPI_SOURCE;
    out.tag = st.MPI_TAG;
    out.body.resize(static_cast<std::size_t>(count));
    check(MPI_Recv(out.body.data(), count, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, c_,
                   MPI_STATUS_IGNORE),
          "MPI_Recv");
    return true;
}

bool comm::progress_sends() {
    bool any = false;
    // Sends to one rank complete in order; testing from the front and stopping at the
    // first unfinished one keeps this cheap with many in flight.
    while (!sends_.empty()) {
        int done = 0;
        check(MPI_Test(&sends_.front().req, &done, MPI_STATUS_IGNORE), "MPI_Test");
        if (done == 0) break;
        sends_.pop_front();
        any = true;
    }
    return any;
}

void comm::flush() {
    while (!sends_.empty()) {
        check(MPI_Wait(&sends_.front().req, MPI_STATUS_IGNORE), "MPI_Wait");
        sends_.pop_front();
    }
}

}  // namespace procpool::mpi_impl
