# The fused CondConv kernel (kernels/fused_conv.cu) on the CPU execution
# layer. Include after tests/emu_tests.cmake: the kernel is compiled there,
# as C++ into cc_cpu_kernels and to PTX, once kernels/fused_conv.cu is in
# CONDCONV_KERNEL_SOURCES. The test is C++ and needs only the kernels and
# the layer (no library). Under ThreadSanitizer it runs a smaller sweep (it
# sees TSan itself); every instance and path is still reached.
if(NOT TARGET cc_cpu_kernels)
  return() # emu tests skipped (CONDCONV_SANITIZE build, or no clang++)
endif()
if(NOT "kernels/fused_conv.cu" IN_LIST CONDCONV_KERNEL_SOURCES)
  message(WARNING "test_fused_conv: kernels/fused_conv.cu is not in CONDCONV_KERNEL_SOURCES, not built")
  return()
endif()
add_executable(test_fused_conv ${CMAKE_CURRENT_LIST_DIR}/test_fused_conv.cpp)
target_link_libraries(test_fused_conv PRIVATE cc_cpu_kernels)
# bench/dev/fused_reference.h: the double reference it shares with fused_dev.
target_include_directories(test_fused_conv PRIVATE ${CC_EMU_ROOT}/bench/dev)
target_compile_options(test_fused_conv PRIVATE ${CC_EMU_CXX_WARNINGS})
add_test(NAME test_fused_conv COMMAND test_fused_conv)
set_tests_properties(test_fused_conv PROPERTIES LABELS "cpu;emu;emu_sanitized" TIMEOUT 600)

# condconv_forward with CONDCONV_ALGO_FUSED through the library, end to end.
cc_emu_test(test_emu_fused_forward cc_cpu_test_util)

# The tensor-core fused kernel (kernels/fused_conv_tc.cu), f16/bf16, NCHW/NHWC.
# Under ThreadSanitizer it runs a smaller sweep; every instance still runs.
if("kernels/fused_conv_tc.cu" IN_LIST CONDCONV_KERNEL_SOURCES)
  add_executable(test_fused_conv_tc ${CMAKE_CURRENT_LIST_DIR}/test_fused_conv_tc.cpp)
  target_link_libraries(test_fused_conv_tc PRIVATE cc_cpu_kernel_fused_conv_tc)
  target_include_directories(test_fused_conv_tc PRIVATE ${CC_EMU_ROOT}/bench/dev)
  target_compile_options(test_fused_conv_tc PRIVATE ${CC_EMU_CXX_WARNINGS})
  add_test(NAME test_fused_conv_tc COMMAND test_fused_conv_tc)
  set_tests_properties(test_fused_conv_tc PROPERTIES LABELS "cpu;emu;emu_sanitized" TIMEOUT 600)
else()
  message(WARNING "test_fused_conv_tc: kernels/fused_conv_tc.cu is not in CONDCONV_KERNEL_SOURCES, not built")
endif()

# The second-generation tensor-core kernel (kernels/fused_conv_tc2.cu, a
# candidate: cp.async double buffering), against the same reference and bounds.
if("kernels/fused_conv_tc2.cu" IN_LIST CONDCONV_KERNEL_SOURCES)
  add_executable(test_fused_conv_tc2 ${CMAKE_CURRENT_LIST_DIR}/test_fused_conv_tc2.cpp)
  target_link_libraries(test_fused_conv_tc2 PRIVATE cc_cpu_kernel_fused_conv_tc2 cc_cpu_kernel_fused_conv_tc)
  target_include_directories(test_fused_conv_tc2 PRIVATE ${CC_EMU_ROOT}/bench/dev)
  target_compile_options(test_fused_conv_tc2 PRIVATE ${CC_EMU_CXX_WARNINGS})
  add_test(NAME test_fused_conv_tc2 COMMAND test_fused_conv_tc2)
  set_tests_properties(test_fused_conv_tc2 PROPERTIES LABELS "cpu;emu;emu_sanitized" TIMEOUT 600)
else()
  message(WARNING "test_fused_conv_tc2: kernels/fused_conv_tc2.cu is not in CONDCONV_KERNEL_SOURCES, not built")
endif()

# The choosers against other cards' limits (H200, H100, A100, sm_89, sm_86):
# every configuration they produce must launch (the launches are checked,
# not run).
if("kernels/fused_conv_tc.cu" IN_LIST CONDCONV_KERNEL_SOURCES AND "kernels/fused_conv_tc2.cu" IN_LIST CONDCONV_KERNEL_SOURCES)
  cc_emu_test(test_emu_profiles "cc_cpu_emu_util;cc_cpu_kernel_fused_conv;cc_cpu_kernel_fused_conv_tc;cc_cpu_kernel_fused_conv_tc2;cc_cpu_kernel_depthwise_fused")
endif()
