# Runs COMMAND (a ;-list) and checks its exit status and output:
#   cmake -DCOMMAND=... -DEXPECT_STATUS=zero|nonzero -DEXPECT_REGEX=... -P expect.cmake
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT 240)
message("${out}${err}")
if(EXPECT_STATUS STREQUAL "zero" AND NOT status EQUAL 0)
  message(FATAL_ERROR "expected exit status 0, got '${status}'")
elseif(EXPECT_STATUS STREQUAL "nonzero" AND (status EQUAL 0 OR status MATCHES "timeout"))
  message(FATAL_ERROR "expected a non-zero exit status (and no timeout), got '${status}'")
endif()
if(DEFINED EXPECT_REGEX AND NOT "${out}${err}" MATCHES "${EXPECT_REGEX}")
  message(FATAL_ERROR "output does not match '${EXPECT_REGEX}'")
endif()
