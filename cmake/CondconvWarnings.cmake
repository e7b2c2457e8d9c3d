# Warning flags for condconv's own targets. Host C: -Wall -Wextra always;
# CONDCONV_WERROR=ON (CI) adds the stricter set and turns warnings into
# errors, for nvcc too.
function(condconv_set_warnings target)
  set(c_flags -Wall -Wextra)
  if(CONDCONV_WERROR)
    list(APPEND c_flags -Werror -Wpedantic -Wshadow -Wstrict-prototypes -Wconversion -Wno-sign-conversion)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:C>:${c_flags}>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(CONDCONV_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
  endif()
endfunction()
