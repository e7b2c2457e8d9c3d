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
