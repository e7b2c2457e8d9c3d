# Warning flags for condconv's own targets. Host C: -Wall -Wextra always;
# CONDCONV_WERROR=ON (CI) adds the stricter set and turns warnings into
# errors, for nvcc too. CONDCONV_C_WARNING_FLAGS is also handed to the fuzz
# target, which tests/fuzz/run_fuzz.sh compiles with clang outside CMake.
set(CONDCONV_C_WARNING_FLAGS -Wall -Wextra)
if(CONDCONV_WERROR)
  list(APPEND CONDCONV_C_WARNING_FLAGS -Werror -Wpedantic -Wshadow -Wstrict-prototypes -Wconversion -Wno-sign-conversion)
endif()

function(condconv_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:C>:${CONDCONV_C_WARNING_FLAGS}>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(CONDCONV_WERROR)
    # nvcc's own diagnostics and, through it, the host compiler's.
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
  endif()
endfunction()

# CONDCONV_SANITIZE=ON (CI's second build, scripts/ci-guards.sh): every C
# object of this tree (library host code, tests, bench, examples) is compiled
# and linked with AddressSanitizer and UBSan, halting at the first finding.
# The nvcc objects stay unsanitized.
if(CONDCONV_SANITIZE)
  set(CONDCONV_SANITIZE_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_compile_options("$<$<COMPILE_LANGUAGE:C>:${CONDCONV_SANITIZE_FLAGS}>")
  # Programs that link the static library link as CUDA, through the host compiler.
  add_link_options("$<$<LINK_LANGUAGE:C,CUDA>:${CONDCONV_SANITIZE_FLAGS}>")
endif()
