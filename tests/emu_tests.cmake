# The CPU execution layer (tests/cuda_cpu): kernels/*.cu compiled unchanged
# as C++ and run on the CPU, against an emulated CUDA runtime, so that every
# kernel and condconv_forward itself run in every CI build. Test-only:
# nothing here is part of the library or installed. Labels: cpu and emu.
#
# Included by tests/CMakeLists.txt (the main build) and by
# tests/cuda_cpu/CMakeLists.txt (the standalone build-emu, build-emu-asan and
# build-emu-tsan trees of scripts/emu-check.sh, which also set the
# sanitizers and CC_EMU_KERNEL_DIR for the bug-injection copies).
#
#   cc_cpu_ptx      nvcc -ptx of each kernel source: the layer reads each
#                   kernel's __launch_bounds__ (.maxntid) and static shared
#                   memory from what nvcc compiled
#   cc_cpu_runtime  the engine, the emulated cudart, cuDNN and cuBLAS
#   cc_cpu_kernels  kernels/*.cu as C++ (CONDCONV_CUDA_CPU)
#   cc_cpu_host     host/*.c, unchanged, against the real CUDA headers,
#                   linked to the above instead of cudart/cuDNN/cuBLAS

set(CC_EMU_ROOT ${CMAKE_CURRENT_LIST_DIR}/..)
get_filename_component(CC_EMU_ROOT ${CC_EMU_ROOT} ABSOLUTE)
set(CC_EMU_DIR ${CC_EMU_ROOT}/tests/cuda_cpu)

# A build with CONDCONV_SANITIZE compiles host C with gcc's ASan, which
# cannot share a program with clang's runtime; the emu layer has its own
# ASan+UBSan and TSan builds instead.
if(CONDCONV_SANITIZE)
  message(STATUS "emu tests: not in a CONDCONV_SANITIZE build (scripts/emu-check.sh builds them with ASan and TSan)")
  return()
endif()

# clang++: the engine fills static __shared__ memory through a linker
# section, and g++ ignores section attributes on the statics of templates.
if(NOT CMAKE_CXX_COMPILER)
  find_program(CC_EMU_CLANGXX NAMES clang++ clang++-14)
  if(CC_EMU_CLANGXX)
    set(CMAKE_CXX_COMPILER ${CC_EMU_CLANGXX})
  endif()
endif()
enable_language(CXX)
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(STATUS "emu tests: skipped, they need clang++ (C++ compiler is ${CMAKE_CXX_COMPILER_ID})")
  return()
endif()
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)

# The sources: the main build's lists (CMakeLists.txt), read from there by
# the standalone build, so that there is one list.
if(NOT DEFINED CONDCONV_KERNEL_SOURCES OR NOT DEFINED CONDCONV_HOST_SOURCES)
  file(READ ${CC_EMU_ROOT}/CMakeLists.txt cc_emu_top)
  foreach(list CONDCONV_KERNEL_SOURCES CONDCONV_HOST_SOURCES)
    string(REGEX MATCH "set\\(${list}([^)]*)\\)" cc_emu_match "${cc_emu_top}")
    string(REGEX REPLACE "[ \t\r\n]+" ";" cc_emu_items "${CMAKE_MATCH_1}")
    list(FILTER cc_emu_items EXCLUDE REGEX "^$")
    set(${list} ${cc_emu_items})
  endforeach()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${CC_EMU_ROOT}/CMakeLists.txt)
endif()
# The bug-injection script points these at copies of kernels/ and host/.
set(CC_EMU_KERNEL_DIR ${CC_EMU_ROOT}/kernels CACHE PATH "kernel sources the emu layer compiles")
set(CC_EMU_HOST_DIR ${CC_EMU_ROOT}/host CACHE PATH "host sources the emu layer compiles")

# Only headers of the toolkit and cuDNN: nothing links cudart, cuDNN or cuBLAS.
if(NOT TARGET Jansson::Jansson)
  list(APPEND CMAKE_MODULE_PATH ${CC_EMU_ROOT}/cmake)
  find_package(CUDAToolkit REQUIRED)
  find_package(CUDNN REQUIRED)
  find_package(Jansson 2.11 REQUIRED)
  find_package(Threads REQUIRED)
endif()

# Warnings: -Wall -Wextra for the layer's C++, errors with CONDCONV_WERROR.
set(CC_EMU_CXX_WARNINGS -Wall -Wextra)
if(CONDCONV_WERROR)
  list(APPEND CC_EMU_CXX_WARNINGS -Werror)
endif()
function(cc_emu_c_warnings target)
  if(COMMAND condconv_set_warnings)
    condconv_set_warnings(${target})
  else()
    target_compile_options(${target} PRIVATE -Wall -Wextra)
  endif()
endfunction()
# Misaligned vector accesses are faults on a GPU: every build checks them
# (UBSan's alignment check, with the call site), not only the sanitizer ones.
set(CC_EMU_ALIGNMENT_CHECK -fsanitize=alignment -fno-sanitize-recover=alignment)

# --- nvcc's PTX of the kernels ---------------------------------------------------------------------
set(cc_emu_nvcc ${CUDAToolkit_NVCC_EXECUTABLE})
if(CMAKE_CUDA_COMPILER)
  set(cc_emu_nvcc ${CMAKE_CUDA_COMPILER})
endif()
file(GLOB cc_emu_kernel_headers CONFIGURE_DEPENDS ${CC_EMU_KERNEL_DIR}/*.h ${CC_EMU_KERNEL_DIR}/*.cuh)
set(cc_emu_ptx)
file(MAKE_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}/cuda_cpu_ptx)
function(cc_emu_ptx_of source out_var)
  get_filename_component(stem ${source} NAME_WE)
  set(ptx ${CMAKE_CURRENT_BINARY_DIR}/cuda_cpu_ptx/${stem}.ptx)
  get_filename_component(dir ${source} DIRECTORY)
  add_custom_command(OUTPUT ${ptx}
    COMMAND ${cc_emu_nvcc} -ptx -std=c++17 -arch=sm_80 -I${CC_EMU_KERNEL_DIR} -I${dir} -o ${ptx} ${source}
    DEPENDS ${source} ${cc_emu_kernel_headers}
    COMMENT "nvcc -ptx ${stem}.cu (launch bounds and shared memory for the CPU execution layer)" VERBATIM)
  set(${out_var} ${ptx} PARENT_SCOPE)
endfunction()

set(cc_emu_kernel_stems)
foreach(src ${CONDCONV_KERNEL_SOURCES})
  get_filename_component(stem ${src} NAME_WE)
  set(cu ${CC_EMU_KERNEL_DIR}/${stem}.cu)
  cc_emu_ptx_of(${cu} ptx)
  list(APPEND cc_emu_ptx ${ptx})
  list(APPEND cc_emu_kernel_stems ${stem})
  # The .cu compiled as C++, unchanged: a translation unit includes the
  # layer's vector types (before any toolkit header), then the .cu.
  file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/cuda_cpu_src/${stem}.cpp
    CONTENT "#include <cuda_cpu/vector_types.h>\n#include \"${cu}\"\n")
endforeach()
set(cc_emu_selftest_cu ${CC_EMU_DIR}/selftest_kernels.cu)
cc_emu_ptx_of(${cc_emu_selftest_cu} ptx)
list(APPEND cc_emu_ptx ${ptx})
add_custom_target(cc_cpu_ptx ALL DEPENDS ${cc_emu_ptx})
list(JOIN cc_emu_ptx ";" cc_emu_ptx_list)
file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/cuda_cpu_gen/cc_cpu_ptx_files.h
  CONTENT "// Written by CMake (tests/emu_tests.cmake): nvcc's PTX of the kernel sources.\n#define CC_CPU_PTX_FILES \"${cc_emu_ptx_list}\"\n")

# --- the layer ---------------------------------------------------------------------------------------
add_library(cc_cpu_runtime STATIC
  ${CC_EMU_DIR}/src/engine.cpp ${CC_EMU_DIR}/src/kernel_info.cpp ${CC_EMU_DIR}/src/runtime.cpp
  ${CC_EMU_DIR}/src/libs.cpp)
target_include_directories(cc_cpu_runtime PUBLIC ${CC_EMU_DIR}/include PRIVATE ${CC_EMU_DIR}/src)
# System headers, as through CUDA::cudart: their warnings are not ours.
target_include_directories(cc_cpu_runtime SYSTEM PUBLIC ${CUDAToolkit_INCLUDE_DIRS} ${CUDNN_INCLUDE_DIR})
target_compile_options(cc_cpu_runtime PRIVATE ${CC_EMU_CXX_WARNINGS}
  "SHELL:-include ${CMAKE_CURRENT_BINARY_DIR}/cuda_cpu_gen/cc_cpu_ptx_files.h")
target_link_libraries(cc_cpu_runtime PUBLIC Threads::Threads ${CMAKE_DL_LIBS})
target_link_options(cc_cpu_runtime PUBLIC ${CC_EMU_ALIGNMENT_CHECK})
add_dependencies(cc_cpu_runtime cc_cpu_ptx)

# One library per kernel source, so that a kernel test (and the
# bug-injection script) rebuilds only its own kernel; cc_cpu_kernels is all.
add_library(cc_cpu_kernels INTERFACE)
foreach(stem ${cc_emu_kernel_stems})
  add_library(cc_cpu_kernel_${stem} STATIC ${CMAKE_CURRENT_BINARY_DIR}/cuda_cpu_src/${stem}.cpp)
  target_include_directories(cc_cpu_kernel_${stem} PUBLIC ${CC_EMU_KERNEL_DIR})
  target_compile_definitions(cc_cpu_kernel_${stem} PUBLIC CONDCONV_CUDA_CPU)
  # -Wno-pass-failed: `#pragma unroll` is a hint for nvcc; clang says when it
  # cannot unroll for the CPU, which does not matter here.
  target_compile_options(cc_cpu_kernel_${stem} PRIVATE ${CC_EMU_CXX_WARNINGS} -Wno-pass-failed ${CC_EMU_ALIGNMENT_CHECK})
  target_link_libraries(cc_cpu_kernel_${stem} PUBLIC cc_cpu_runtime)
  target_link_libraries(cc_cpu_kernels INTERFACE cc_cpu_kernel_${stem})
endforeach()

set(cc_emu_host)
foreach(src ${CONDCONV_HOST_SOURCES})
  string(REGEX REPLACE "^host/" "" src ${src})
  list(APPEND cc_emu_host ${CC_EMU_HOST_DIR}/${src})
endforeach()
add_library(cc_cpu_host STATIC ${cc_emu_host})
target_include_directories(cc_cpu_host
  PUBLIC ${CC_EMU_ROOT}/include
  PRIVATE ${CC_EMU_HOST_DIR} ${JANSSON_INCLUDE_DIR})
if(DEFINED CONDCONV_NVTX)
  target_compile_definitions(cc_cpu_host PRIVATE CONDCONV_WITH_NVTX=$<BOOL:${CONDCONV_NVTX}>)
else()
  target_compile_definitions(cc_cpu_host PRIVATE CONDCONV_WITH_NVTX=1)
endif()
target_link_libraries(cc_cpu_host PUBLIC cc_cpu_kernels cc_cpu_runtime Jansson::Jansson m)
cc_emu_c_warnings(cc_cpu_host)

# Helpers of the kernel tests (nothing of the library: they rebuild fast).
add_library(cc_cpu_emu_util STATIC ${CC_EMU_DIR}/emu_util.c)
target_include_directories(cc_cpu_emu_util PUBLIC ${CC_EMU_DIR})
target_link_libraries(cc_cpu_emu_util PUBLIC cc_cpu_runtime)
cc_emu_c_warnings(cc_cpu_emu_util)
# The test helpers of tests/, against the emulated library.
add_library(cc_cpu_test_util STATIC ${CC_EMU_ROOT}/tests/test_util.c ${CC_EMU_ROOT}/tests/gpu_util.c
                                   ${CC_EMU_DIR}/emu_forward.c)
target_include_directories(cc_cpu_test_util PUBLIC ${CC_EMU_ROOT}/tests)
target_link_libraries(cc_cpu_test_util PUBLIC cc_cpu_host cc_cpu_emu_util)
cc_emu_c_warnings(cc_cpu_test_util)

# --- the tests ---------------------------------------------------------------------------------------
function(cc_emu_test name helpers)
  add_executable(${name} ${CC_EMU_DIR}/${name}.c)
  target_link_libraries(${name} PRIVATE ${helpers})
  set_target_properties(${name} PROPERTIES LINKER_LANGUAGE CXX)
  cc_emu_c_warnings(${name})
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "cpu;emu;emu_sanitized" TIMEOUT 600)
endfunction()

# One per kernel family, against double-precision references.
foreach(t routing aggregate backward backward_mixture backward_wgrad depthwise_fused epilogue gather)
  string(REPLACE "_fused" "" name ${t})
  cc_emu_test(test_emu_${name} "cc_cpu_emu_util;cc_cpu_kernel_${t}")
endforeach()
# condconv_forward end to end, fault injection, device restore, pointer staging,
# the emulated cuDNN and cuBLAS, AUTO's candidates and budget.
foreach(t forward formats faults devices staging libs auto)
  cc_emu_test(test_emu_${t} cc_cpu_test_util)
  # End to end: host code around kernels that the per-kernel tests already
  # run under TSan; the CI guard runs these under ASan only (emu_e2e).
  set_tests_properties(test_emu_${t} PROPERTIES LABELS "cpu;emu;emu_e2e;emu_sanitized")
endforeach()
# condconv_backward end to end: tests/test_gpu_backward.c, run on the layer.
add_executable(test_emu_backward_api ${CC_EMU_ROOT}/tests/test_gpu_backward.c)
target_compile_definitions(test_emu_backward_api PRIVATE CC_EMU_TEST=1)
target_link_libraries(test_emu_backward_api PRIVATE cc_cpu_test_util)
set_target_properties(test_emu_backward_api PROPERTIES LINKER_LANGUAGE CXX)
cc_emu_c_warnings(test_emu_backward_api)
add_test(NAME test_emu_backward_api COMMAND test_emu_backward_api)
set_tests_properties(test_emu_backward_api PROPERTIES LABELS "cpu;emu;emu_e2e;emu_sanitized" TIMEOUT 600)
# The cuDNN graph-API candidate through the algorithms' ops (host-internal headers).
cc_emu_test(test_emu_graph cc_cpu_test_util)
target_include_directories(test_emu_graph PRIVATE ${CC_EMU_HOST_DIR} ${CC_EMU_KERNEL_DIR})
set_tests_properties(test_emu_graph PROPERTIES LABELS "cpu;emu;emu_e2e;emu_sanitized")

# The layer's own checks, on small deliberately wrong kernels.
set(cc_emu_selftest_cpp ${CMAKE_CURRENT_BINARY_DIR}/cuda_cpu_src/selftest_kernels.cpp)
file(GENERATE OUTPUT ${cc_emu_selftest_cpp}
  CONTENT "#include <cuda_cpu/vector_types.h>\n#include \"${cc_emu_selftest_cu}\"\n")
add_executable(test_emu_layer ${CC_EMU_DIR}/test_emu_layer.c ${cc_emu_selftest_cpp})
target_compile_definitions(test_emu_layer PRIVATE CONDCONV_CUDA_CPU)
target_include_directories(test_emu_layer PRIVATE ${CC_EMU_DIR} ${CC_EMU_KERNEL_DIR})
target_compile_options(test_emu_layer PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${CC_EMU_CXX_WARNINGS} ${CC_EMU_ALIGNMENT_CHECK}>)
target_link_libraries(test_emu_layer PRIVATE cc_cpu_test_util cc_cpu_emu_util)
set_target_properties(test_emu_layer PROPERTIES LINKER_LANGUAGE CXX)
cc_emu_c_warnings(test_emu_layer)
add_test(NAME test_emu_layer COMMAND test_emu_layer)
set_tests_properties(test_emu_layer PROPERTIES LABELS "cpu;emu;emu_sanitized" TIMEOUT 600)
