# Lists the tests of `ctest --show-only=json-v1` one per line, for
# scripts/ci-guards.sh (the valgrind guard), without needing python or jq:
#
#   cmake -DJSON=tests.json -DOUT=tests.txt -P scripts/ctest-commands.cmake
#
# Each line holds fields separated by the ASCII unit separator (0x1f):
# name, will_fail (0 or 1), working directory (may be empty), then the
# command and its arguments.
cmake_minimum_required(VERSION 3.24)
if(NOT DEFINED JSON OR NOT DEFINED OUT)
  message(FATAL_ERROR "usage: cmake -DJSON=<ctest json> -DOUT=<output> -P ctest-commands.cmake")
endif()
file(READ "${JSON}" json)
string(ASCII 31 sep)
set(lines "")
string(JSON count LENGTH "${json}" tests)
if(count GREATER 0)
  math(EXPR last "${count} - 1")
  foreach(i RANGE ${last})
    string(JSON name GET "${json}" tests ${i} name)
    string(JSON ncmd ERROR_VARIABLE no_command LENGTH "${json}" tests ${i} command)
    if(no_command OR ncmd EQUAL 0)
      continue() # a test without a command (NOT_AVAILABLE): nothing to run
    endif()
    set(will_fail 0)
    set(workdir "")
    string(JSON nprops ERROR_VARIABLE no_props LENGTH "${json}" tests ${i} properties)
    if(NOT no_props AND nprops GREATER 0)
      math(EXPR plast "${nprops} - 1")
      foreach(p RANGE ${plast})
        string(JSON pname GET "${json}" tests ${i} properties ${p} name)
        string(JSON pvalue GET "${json}" tests ${i} properties ${p} value)
        if(pname STREQUAL "WILL_FAIL" AND pvalue)
          set(will_fail 1)
        elseif(pname STREQUAL "WORKING_DIRECTORY")
          set(workdir "${pvalue}")
        endif()
      endforeach()
    endif()
    set(line "${name}${sep}${will_fail}${sep}${workdir}")
    math(EXPR clast "${ncmd} - 1")
    foreach(c RANGE ${clast})
      string(JSON arg GET "${json}" tests ${i} command ${c})
      string(APPEND line "${sep}${arg}")
    endforeach()
    string(APPEND lines "${line}\n")
  endforeach()
endif()
file(WRITE "${OUT}" "${lines}")
