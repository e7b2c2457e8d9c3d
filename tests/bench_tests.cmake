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
  # Without a GPU (or with --cpu) the bench says what it runs: the layers --set/--layer
  # chose, every GPU-only option given as ignored with the reason, and each CPU row's
  # spread verdict (issue 18 item 10). Each fails on the old output.
  set(cpu_layer --batch 1 --experts 2 --layer 16,24,3,1,1,8,8)
  add_test(NAME test_bench_cpu_banner COMMAND $<TARGET_FILE:condconv-bench> --cpu ${cpu_layer})
  set_tests_properties(test_bench_cpu_banner PROPERTIES LABELS cpu
    PASS_REGULAR_EXPRESSION "on the 1 layer that --set/--layer chose \\(c3_16x24_8\\),.batch 1, experts 2,"
    FAIL_REGULAR_EXPRESSION "on one small layer")
  add_test(NAME test_bench_cpu_default_banner COMMAND $<TARGET_FILE:condconv-bench> --cpu --experts 2)
  set_tests_properties(test_bench_cpu_default_banner PROPERTIES LABELS cpu
    PASS_REGULAR_EXPRESSION "on one small layer, EfficientNet-CC-B0's 1x1 112->672 at 14x14 \\(--set/--layer")
  add_test(NAME test_bench_cpu_ignored
    COMMAND $<TARGET_FILE:condconv-bench> --cpu ${cpu_layer} --algo fused,auto --math tf32 --select heuristic
            --reps 3 --no-graph --device 1 --quick)
  set_tests_properties(test_bench_cpu_ignored PROPERTIES LABELS cpu
    PASS_REGULAR_EXPRESSION "--algo fused,auto is ignored on the CPU path: the CPU reference path is one algorithm[^\n]*\n[^\n]*--math tf32 is ignored on the CPU path: [^\n]*double[^\n]*\n[^\n]*--select heuristic is ignored[^\n]*\n[^\n]*--reps 3 is ignored[^\n]*\n[^\n]*--no-graph is ignored[^\n]*\n[^\n]*--device 1 is ignored[^\n]*\n[^\n]*--quick is ignored")
  add_test(NAME test_bench_cpu_stability COMMAND $<TARGET_FILE:condconv-bench> --cpu ${cpu_layer} --experts 1,2)
  set_tests_properties(test_bench_cpu_stability PROPERTIES LABELS cpu
    PASS_REGULAR_EXPRESSION "cpu_reference [^\n]*median of [0-9]+. (stable: p10-p90 spans|UNSTABLE: p10-p90 spans)[^\n]*\n.*cpu_reference [^\n]*median of [0-9]+. (stable: p10-p90 spans|UNSTABLE: p10-p90 spans)")
  # The verdict's rule itself, on made-up timings.
  add_executable(test_bench_stats ${CMAKE_CURRENT_SOURCE_DIR}/test_bench_stats.c ${PROJECT_SOURCE_DIR}/bench/stats.c
                                  ${PROJECT_SOURCE_DIR}/bench/timing.c)
  target_include_directories(test_bench_stats PRIVATE ${PROJECT_SOURCE_DIR}/bench ${PROJECT_SOURCE_DIR}/host
                                                      ${PROJECT_SOURCE_DIR}/kernels)
  target_link_libraries(test_bench_stats PRIVATE condconv_test_util CUDA::cudart m)
  condconv_set_warnings(test_bench_stats)
  add_test(NAME test_bench_stats COMMAND test_bench_stats)
  set_tests_properties(test_bench_stats PROPERTIES LABELS cpu)
  # Bad command lines are refused with exit status 2 and a message.
  add_test(NAME test_bench_bad_args COMMAND $<TARGET_FILE:condconv-bench> --dtype f64)
  set_tests_properties(test_bench_bad_args PROPERTIES LABELS cpu WILL_FAIL TRUE)
endif()

# A clone is complete: nothing the README, the bench or the tests cite lives outside
# the repository (the anchor tables are in bench/anchors/, issue 18 item 9): no
# path into the workplace's shared folder at all.
add_test(NAME test_repo_self_contained
  COMMAND sh -c "! grep -rn --include=*.md --include=*.c --include=*.h --include=*.cu --include=*.cuh --include=*.py --include=*.sh --include=*.txt --include=*.cmake '\\.\\./shared/' README.md bench examples host include kernels python scripts tests CMakeLists.txt"
  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(test_repo_self_contained PROPERTIES LABELS cpu)
