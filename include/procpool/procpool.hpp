// Umbrella header: everything a procpool user needs.
#pragma once

#include "procpool/continuation.hpp"
#include "procpool/error.hpp"
#include "procpool/executor.hpp"
#include "procpool/future.hpp"
#include "procpool/journal.hpp"
#include "procpool/outcome.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/run.hpp"
#include "procpool/stream.hpp"
#include "procpool/task_output.hpp"
#include "procpool/thread_pool.hpp"
#include "procpool/wire.hpp"
