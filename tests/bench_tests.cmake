# Benchmark-area tests (label cpu): the paper's cost table from the cost
# model, and condconv-bench's CPU path (it must work, and say so, without a GPU).
condconv_cpu_test(test_paper_cost_table)

if(CONDCONV_BUILD_BENCH AND EXISTS ${CMAKE_SOURCE_DIR}/bench/CMakeLists.txt)
  # --cpu runs the reference path whether or not a GPU is present; the CSV and
  # JSON writers run too. bench/ is added after tests/, so the target is named
  # through a generator expression, resolved at generation time.
  add_test(NAME test_bench_cpu
    COMMAND $<TARGET_FILE:condconv-bench> --cpu --batch 1 --experts 2 --layer 16,24,3,1,1,8,8
            --csv ${CMAKE_CURRENT_BINARY_DIR}/bench_cpu.csv --json ${CMAKE_CURRENT_BINARY_DIR}/bench_cpu.json)
  set_tests_properties(test_bench_cpu PROPERTIES LABELS cpu)
  # The CPU path in a half type and channels-last, the formats the CPU reference runs.
  add_test(NAME test_bench_cpu_half
    COMMAND $<TARGET_FILE:condconv-bench> --cpu --batch 2 --experts 3 --layer 12,20,3,2,4,9,7 --dtype bf16
            --layout nhwc --csv ${CMAKE_CURRENT_BINARY_DIR}/bench_cpu_half.csv)
  set_tests_properties(test_bench_cpu_half PROPERTIES LABELS cpu PASS_REGULAR_EXPRESSION "bf16 nhwc.*cpu_reference")
  # The roofline floors need no GPU; they must say they are floors.
  add_test(NAME test_bench_floors
    COMMAND $<TARGET_FILE:condconv-bench> --floors h200 --batch 1,128 --experts 1,32 --math both)
  set_tests_properties(test_bench_floors PROPERTIES LABELS cpu
    PASS_REGULAR_EXPRESSION "not measurements.*pw1152x320_7 +128 +32 \\|")
  add_test(NAME test_bench_floors_bad_card COMMAND $<TARGET_FILE:condconv-bench> --floors a100)
  set_tests_properties(test_bench_floors_bad_card PROPERTIES LABELS cpu WILL_FAIL TRUE)
  # Bad command lines are refused with exit status 2 and a message.
  add_test(NAME test_bench_bad_args COMMAND $<TARGET_FILE:condconv-bench> --dtype f64)
  set_tests_properties(test_bench_bad_args PROPERTIES LABELS cpu WILL_FAIL TRUE)
endif()

# A clone is complete: nothing the README, the bench or the tests cite lives outside
# the repository (the anchor tables are in bench/anchors/, issue 18 item 9).
add_test(NAME test_repo_self_contained
  COMMAND sh -c "! grep -rn --include=*.md --include=*.c --include=*.h --include=*.cu --include=*.cuh --include=*.py --include=*.sh --include=*.txt --include=*.cmake '\\.\\./shared/anchors' README.md bench examples host include kernels scripts tests CMakeLists.txt"
  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(test_repo_self_contained PROPERTIES LABELS cpu)
