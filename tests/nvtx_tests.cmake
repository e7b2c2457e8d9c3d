# The NVTX ranges of a forward, seen through NVTX's injection interface
# (issue 18 item 12): tests/nvtx/nvtx_recorder.c is loaded by NVTX from
# NVTX_INJECTION64_PATH, as nsys and ncu are, and records every push and pop;
# test_nvtx_ranges runs prepare, route and forward of every algorithm on the
# CPU execution layer (tests/cuda_cpu) and checks the names and nesting.
# Needs the emu layer's targets (emu_tests.cmake) and NVTX compiled in.
if(NOT TARGET cc_cpu_test_util)
  return()
endif()
if(DEFINED CONDCONV_NVTX AND NOT CONDCONV_NVTX)
  message(STATUS "test_nvtx_ranges: not built, CONDCONV_NVTX is OFF")
  return()
endif()

add_library(cc_nvtx_recorder MODULE ${CMAKE_CURRENT_LIST_DIR}/nvtx/nvtx_recorder.c)
target_include_directories(cc_nvtx_recorder PRIVATE ${CUDAToolkit_INCLUDE_DIRS} ${CMAKE_CURRENT_LIST_DIR}/nvtx)
set_target_properties(cc_nvtx_recorder PROPERTIES C_VISIBILITY_PRESET hidden PREFIX "lib")
target_link_libraries(cc_nvtx_recorder PRIVATE Threads::Threads)
cc_emu_c_warnings(cc_nvtx_recorder)

add_executable(test_nvtx_ranges ${CMAKE_CURRENT_LIST_DIR}/nvtx/test_nvtx_ranges.c)
target_include_directories(test_nvtx_ranges PRIVATE ${CMAKE_CURRENT_LIST_DIR}/nvtx)
target_link_libraries(test_nvtx_ranges PRIVATE cc_cpu_test_util ${CMAKE_DL_LIBS})
set_target_properties(test_nvtx_ranges PROPERTIES LINKER_LANGUAGE CXX)
cc_emu_c_warnings(test_nvtx_ranges)
add_dependencies(test_nvtx_ranges cc_nvtx_recorder)
add_test(NAME test_nvtx_ranges COMMAND test_nvtx_ranges)
set_tests_properties(test_nvtx_ranges PROPERTIES LABELS "cpu;emu" TIMEOUT 600
  ENVIRONMENT "NVTX_INJECTION64_PATH=$<TARGET_FILE:cc_nvtx_recorder>")
