# GPU tests (label gpu; exit 77 = skipped without a device).
foreach(algo auto auto_heuristic cudnn_grouped gemm_batched depthwise_fused mixture fused)
  condconv_gpu_test(test_gpu_forward ${algo})
endforeach()
foreach(algo auto cudnn_grouped gemm_batched mixture fused)
  condconv_gpu_test(test_gpu_forward ${algo} tf32)
endforeach()
condconv_gpu_test(test_gpu_forward fused tf32 nhwc)
# Every algorithm x {f16, bf16} x {NCHW, NHWC}, and f32 NHWC (fused has no
# strict-f32 NHWC kernel: that run checks that it says so, and that AUTO
# avoids it; with tf32 it runs on tensor cores, above).
foreach(algo auto auto_heuristic cudnn_grouped gemm_batched depthwise_fused mixture fused)
  condconv_gpu_test(test_gpu_forward ${algo} nhwc)
  foreach(dtype f16 bf16)
    condconv_gpu_test(test_gpu_forward ${algo} ${dtype})
    condconv_gpu_test(test_gpu_forward ${algo} ${dtype} nhwc)
  endforeach()
endforeach()
condconv_gpu_test(test_gpu_routing)
condconv_gpu_test(test_gpu_graph)
condconv_gpu_test(test_gpu_threads)
condconv_gpu_test(test_gpu_bad_inputs)
