# examples/condconv_server.c's GPU path -- slots, CUDA graphs per captured
# batch size, padding and chunking, completion by CUDA events, f16/bf16 and
# NHWC -- run without a GPU: the same source linked against the CPU
# execution layer's emulated runtime (tests/cuda_cpu) instead of cudart, and
# verified against the CPU reference (issue 18 item 11). One worker: the
# emulated device runs one host thread's work at a time. Needs the emu
# layer's targets (emu_tests.cmake).
if(NOT TARGET cc_cpu_host)
  return()
endif()
add_executable(condconv_server_emu ${PROJECT_SOURCE_DIR}/examples/condconv_server.c
                                   ${CMAKE_CURRENT_LIST_DIR}/example_emu/pinned_host.c)
target_link_libraries(condconv_server_emu PRIVATE cc_cpu_host Threads::Threads m)
set_target_properties(condconv_server_emu PROPERTIES LINKER_LANGUAGE CXX)
cc_emu_c_warnings(condconv_server_emu)
set(weights ${CMAKE_CURRENT_LIST_DIR}/data/golden_depthwise5x5_s2.safetensors)
# Each case forces one algorithm: AUTO would measure all of them at four
# batch sizes on the emulated device (minutes). cudnn_grouped and mixture
# put emulated cuDNN calls inside the captured graphs.
foreach(format "f32;nchw;2;cudnn_grouped" "f16;nhwc;3;depthwise_fused" "bf16;nchw;1;mixture")
  list(GET format 0 dtype)
  list(GET format 1 layout)
  list(GET format 2 inflight)
  list(GET format 3 algo)
  add_test(NAME example_server_emu_${dtype}_${layout}
    COMMAND condconv_server_emu ${weights} --require-gpu --dtype ${dtype} --layout ${layout} --inflight ${inflight}
            --workers 1 --requests 6 --algo ${algo} --verify)
  set_tests_properties(example_server_emu_${dtype}_${layout} PROPERTIES LABELS "cpu;emu" TIMEOUT 600
    PASS_REGULAR_EXPRESSION "6 of 6 requests.*on the GPU with CUDA graphs.*padding images.*completion by CUDA events.*0 differ")
endforeach()

# condconv-bench's GPU sweep -- the static cuDNN yardstick, every algorithm,
# AUTO and a row per candidate (--candidates, issue 19), CSV out -- run
# without a GPU, linked against the emulated runtime and libraries instead
# of cudart, cuDNN and cuBLAS. It proves the sweep's logic (each candidate
# AUTO lists can be forced by its name and measured); its times are the
# emulator's, meaningless as speeds. One tiny layer, few repeats.
set(cc_bench_dir ${PROJECT_SOURCE_DIR}/bench)
add_executable(condconv_bench_emu ${cc_bench_dir}/main.c ${cc_bench_dir}/layers.c ${cc_bench_dir}/timing.c
                                  ${cc_bench_dir}/baselines.c ${cc_bench_dir}/report.c ${cc_bench_dir}/floors.c
                                  ${cc_bench_dir}/cpu_path.c ${cc_bench_dir}/stats.c)
target_include_directories(condconv_bench_emu PRIVATE ${cc_bench_dir} ${PROJECT_SOURCE_DIR}/host
                                                      ${PROJECT_SOURCE_DIR}/kernels)
target_link_libraries(condconv_bench_emu PRIVATE cc_cpu_host m)
set_target_properties(condconv_bench_emu PROPERTIES LINKER_LANGUAGE CXX)
cc_emu_c_warnings(condconv_bench_emu)
# f32 NHWC: the fused kernel's NHWC loader is a candidate there; AUTO's
# budget unbounded so that every candidate is timed at prepare (the
# emulator's forwards take milliseconds). Rows: AUTO, the loader forced by
# name, routing variant 1 and aggregation variants 1 and 2 under AUTO.
add_test(NAME test_bench_emu_candidates
  COMMAND condconv_bench_emu --layer 16,24,1,1,1,4,4 --batch 3 --experts 4 --dtype f32 --layout nhwc --algo auto
          --candidates --auto-budget 0 --reps 3 --warmup 1 --iters 1 --phase-reps 1 --max-row-ms 1 --no-graph
          --no-ceilings --csv ${CMAKE_CURRENT_BINARY_DIR}/bench_emu_candidates.csv)
set_tests_properties(test_bench_emu_candidates PROPERTIES LABELS "cpu;emu;emu_e2e" TIMEOUT 900
  PASS_REGULAR_EXPRESSION "fp32 auto: ok.*fp32 fused\\[nhwc coalesced\\]: ok.*fp32 auto\\+routing\\[v1\\]: ok.*fp32 auto\\+aggregate\\[v1\\]: ok.*fp32 auto\\+aggregate\\[v2\\]: ok"
  FAIL_REGULAR_EXPRESSION ": error|: n/a")
# --backward (issue 20): each row times the forward and condconv_backward
# (every gradient), the static row cuDNN's forward, backward data and
# backward filter; f32 NCHW with routing inside the layer, and bf16 NHWC
# with external routing and a bias (every gradient buffer the bench feeds).
add_test(NAME test_bench_emu_backward
  COMMAND condconv_bench_emu --backward --layer 12,16,3,1,1,5,5 --batch 2 --experts 3 --algo static,auto
          --reps 3 --warmup 1 --iters 1 --max-row-ms 1 --no-graph --no-ceilings)
set_tests_properties(test_bench_emu_backward PROPERTIES LABELS "cpu;emu;emu_e2e" TIMEOUT 600
  PASS_REGULAR_EXPRESSION "fp32 static: ok.*fp32 auto: ok"
  FAIL_REGULAR_EXPRESSION ": error|: n/a")
add_test(NAME test_bench_emu_backward_half
  COMMAND condconv_bench_emu --backward --layer 8,12,1,2,1,6,6 --batch 3 --experts 2 --algo static,auto,cudnn_grouped
          --dtype bf16 --layout nhwc --routing external --epilogue bias --reps 3 --warmup 1 --iters 1
          --max-row-ms 1 --no-graph --no-ceilings)
set_tests_properties(test_bench_emu_backward_half PROPERTIES LABELS "cpu;emu;emu_e2e" TIMEOUT 600
  PASS_REGULAR_EXPRESSION "bf16 static: ok.*bf16 auto: ok.*bf16 cudnn_grouped: ok"
  FAIL_REGULAR_EXPRESSION ": error|: n/a")
