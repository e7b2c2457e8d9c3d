# FindCUDNN
# ---------
# Finds cuDNN (headers and the main library) and defines the imported target
# CUDNN::cudnn, plus CUDNN_FOUND, CUDNN_INCLUDE_DIR, CUDNN_LIBRARY and
# CUDNN_VERSION.
#
# Searched in this order, the first hit wins:
#   1. CUDNN_ROOT (CMake variable or environment variable): <root>/include, <root>/lib64, <root>/lib
#   2. the CUDA toolkit's own directories (CUDAToolkit_INCLUDE_DIRS, CUDAToolkit_LIBRARY_DIR)
#      -- where the NVIDIA tarball/toolkit installs put it
#   3. the Debian/Ubuntu multiarch directories /usr/include/x86_64-linux-gnu and
#      /usr/lib/x86_64-linux-gnu -- where the cudnn9 .deb packages put it
# Run find_package(CUDAToolkit) first so that step 2 has something to look at.

set(_cudnn_root "${CUDNN_ROOT}")
if(NOT _cudnn_root AND DEFINED ENV{CUDNN_ROOT})
  set(_cudnn_root "$ENV{CUDNN_ROOT}")
endif()

set(_cudnn_include_hints "")
set(_cudnn_library_hints "")
if(_cudnn_root)
  list(APPEND _cudnn_include_hints "${_cudnn_root}/include")
  list(APPEND _cudnn_library_hints "${_cudnn_root}/lib64" "${_cudnn_root}/lib")
endif()
if(CUDAToolkit_INCLUDE_DIRS)
  list(APPEND _cudnn_include_hints ${CUDAToolkit_INCLUDE_DIRS})
endif()
if(CUDAToolkit_LIBRARY_DIR)
  list(APPEND _cudnn_library_hints "${CUDAToolkit_LIBRARY_DIR}")
endif()
list(APPEND _cudnn_include_hints "/usr/include/x86_64-linux-gnu" "/usr/include")
list(APPEND _cudnn_library_hints "/usr/lib/x86_64-linux-gnu" "/usr/lib64" "/usr/lib")

# NO_DEFAULT_PATH keeps the order above authoritative.
find_path(CUDNN_INCLUDE_DIR NAMES cudnn_version.h cudnn.h PATHS ${_cudnn_include_hints} NO_DEFAULT_PATH)
find_library(CUDNN_LIBRARY NAMES cudnn PATHS ${_cudnn_library_hints} NO_DEFAULT_PATH)

if(CUDNN_INCLUDE_DIR AND EXISTS "${CUDNN_INCLUDE_DIR}/cudnn_version.h")
  file(STRINGS "${CUDNN_INCLUDE_DIR}/cudnn_version.h" _cudnn_version_lines
       REGEX "^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) +[0-9]+")
  foreach(_part MAJOR MINOR PATCHLEVEL)
    string(REGEX MATCH "CUDNN_${_part} +([0-9]+)" _match "${_cudnn_version_lines}")
    set(_cudnn_${_part} "${CMAKE_MATCH_1}")
  endforeach()
  set(CUDNN_VERSION "${_cudnn_MAJOR}.${_cudnn_MINOR}.${_cudnn_PATCHLEVEL}")
endif()

string(REPLACE ";" ", " _cudnn_looked_inc "${_cudnn_include_hints}")
string(REPLACE ";" ", " _cudnn_looked_lib "${_cudnn_library_hints}")
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CUDNN
  REQUIRED_VARS CUDNN_LIBRARY CUDNN_INCLUDE_DIR
  VERSION_VAR CUDNN_VERSION
  REASON_FAILURE_MESSAGE
    "cuDNN not found. Looked for cudnn_version.h in: ${_cudnn_looked_inc} -- and for libcudnn in: ${_cudnn_looked_lib}. Set CUDNN_ROOT to the cuDNN install prefix.")

if(CUDNN_FOUND AND NOT TARGET CUDNN::cudnn)
  add_library(CUDNN::cudnn UNKNOWN IMPORTED)
  set_target_properties(CUDNN::cudnn PROPERTIES
    IMPORTED_LOCATION "${CUDNN_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CUDNN_INCLUDE_DIR}")
endif()
mark_as_advanced(CUDNN_INCLUDE_DIR CUDNN_LIBRARY)
