# Trained weights: the safetensors loader (hostile files, fuzzing) and the
# golden vectors from timm (tests/data, written by scripts/make_golden.py).
set(CONDCONV_GOLDEN_DIR ${CMAKE_CURRENT_SOURCE_DIR}/data)

# The hostile-file test reads the parser's internal API (host/safetensors.h).
condconv_cpu_test(test_safetensors_hostile)
target_include_directories(test_safetensors_hostile PRIVATE ${PROJECT_SOURCE_DIR}/host)

# Golden vectors from timm, read through the loader; the CPU reference and
# every GPU algorithm are checked against them.
add_library(condconv_golden_util STATIC golden_util.c)
target_link_libraries(condconv_golden_util PUBLIC condconv_test_util)
target_include_directories(condconv_golden_util PUBLIC ${PROJECT_SOURCE_DIR}/host)
target_compile_definitions(condconv_golden_util PUBLIC CONDCONV_GOLDEN_DIR="${CONDCONV_GOLDEN_DIR}")
condconv_set_warnings(condconv_golden_util)

condconv_cpu_test(test_golden_cpu)
target_link_libraries(test_golden_cpu PRIVATE condconv_golden_util)

add_executable(test_golden_gpu test_golden_gpu.c)
target_link_libraries(test_golden_gpu PRIVATE condconv_golden_util condconv_gpu_test_util)
condconv_set_warnings(test_golden_gpu)
condconv_gpu_test(test_golden_gpu)

# The loader's fuzz target (tests/fuzz): built with clang, libFuzzer,
# AddressSanitizer and UBSan by run_fuzz.sh, which reads the include and
# library paths of this build from fuzz.env. 100000 executions from the
# seed corpus; exit 77 (skipped) without clang's libFuzzer runtime.
set(fuzz_cflags -I${PROJECT_SOURCE_DIR}/include -I${PROJECT_SOURCE_DIR}/host -I${PROJECT_SOURCE_DIR}/kernels)
set(fuzz_include_dirs ${CUDAToolkit_INCLUDE_DIRS} ${CUDNN_INCLUDE_DIR} ${JANSSON_INCLUDE_DIR})
list(REMOVE_DUPLICATES fuzz_include_dirs)
list(REMOVE_ITEM fuzz_include_dirs /usr/include) # a system directory as -I breaks #include_next
foreach(dir ${fuzz_include_dirs})
  list(APPEND fuzz_cflags -I${dir})
endforeach()
set(fuzz_libs $<TARGET_FILE:condconv_static> $<TARGET_FILE:CUDA::cublas> $<TARGET_FILE:CUDA::cudart>
              ${CUDNN_LIBRARY} ${JANSSON_LIBRARY})
list(JOIN fuzz_cflags "\" \"" fuzz_cflags_sh)
list(JOIN fuzz_libs "\" \"" fuzz_libs_sh)
list(JOIN CONDCONV_C_WARNING_FLAGS "\" \"" fuzz_warnings_sh)
file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/fuzz/fuzz.env CONTENT
"# Written by CMake (tests/weights_tests.cmake) for tests/fuzz/run_fuzz.sh.
FUZZ_SRC=\"${PROJECT_SOURCE_DIR}\"
FUZZ_CFLAGS=(\"${fuzz_cflags_sh}\")
FUZZ_LIBS=(\"${fuzz_libs_sh}\")
FUZZ_WARNINGS=(\"${fuzz_warnings_sh}\")
")
add_test(NAME test_fuzz_safetensors
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/run_fuzz.sh ${CMAKE_BINARY_DIR} 100000)
set_tests_properties(test_fuzz_safetensors PROPERTIES LABELS cpu SKIP_RETURN_CODE 77 TIMEOUT 900)

# No leak on any error path of the loader: the hostile-file test under
# valgrind (suppressions: a glibc loader false positive in the CUDA
# libraries' constructors only).
find_program(CONDCONV_VALGRIND valgrind)
if(CONDCONV_VALGRIND)
  add_test(NAME test_safetensors_hostile_valgrind
    COMMAND ${CONDCONV_VALGRIND} --leak-check=full --errors-for-leak-kinds=definite,possible --error-exitcode=1
            --suppressions=${CMAKE_CURRENT_SOURCE_DIR}/valgrind-cuda-libs.supp $<TARGET_FILE:test_safetensors_hostile>)
  set_tests_properties(test_safetensors_hostile_valgrind PROPERTIES LABELS cpu)
endif()
