// Umbrella header: everything a procpool user needs.
#pragma once

#include "procpool/error.hpp"
#include "procpool/executor.hpp"
#include "procpool/future.hpp"
#include "procpool/thread_pool.hpp"
