# FindJansson
# -----------
# Finds Jansson, the JSON library condconv parses safetensors headers with
# (Debian/Ubuntu: libjansson-dev), and defines the imported target
# Jansson::Jansson plus Jansson_FOUND, JANSSON_INCLUDE_DIR, JANSSON_LIBRARY
# and Jansson_VERSION.
#
# Searched in this order: JANSSON_ROOT (CMake or environment variable),
# the locations pkg-config reports for jansson, then CMake's default paths
# (which include the Debian multiarch directories).

set(_jansson_hints "")
set(_jansson_root "${JANSSON_ROOT}")
if(NOT _jansson_root AND DEFINED ENV{JANSSON_ROOT})
  set(_jansson_root "$ENV{JANSSON_ROOT}")
endif()
if(_jansson_root)
  list(APPEND _jansson_hints "${_jansson_root}")
endif()
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(PC_JANSSON QUIET jansson)
endif()

find_path(JANSSON_INCLUDE_DIR NAMES jansson.h HINTS ${_jansson_hints} ${PC_JANSSON_INCLUDE_DIRS}
          PATH_SUFFIXES include)
find_library(JANSSON_LIBRARY NAMES jansson HINTS ${_jansson_hints} ${PC_JANSSON_LIBRARY_DIRS}
             PATH_SUFFIXES lib lib64)

if(JANSSON_INCLUDE_DIR AND EXISTS "${JANSSON_INCLUDE_DIR}/jansson.h")
  file(STRINGS "${JANSSON_INCLUDE_DIR}/jansson.h" _jansson_version_line REGEX "^#define JANSSON_VERSION +\"")
  string(REGEX MATCH "\"([0-9.]+)\"" _jansson_match "${_jansson_version_line}")
  set(Jansson_VERSION "${CMAKE_MATCH_1}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Jansson
  REQUIRED_VARS JANSSON_LIBRARY JANSSON_INCLUDE_DIR
  VERSION_VAR Jansson_VERSION
  REASON_FAILURE_MESSAGE
    "Jansson not found: install libjansson-dev (scripts/setup.sh does) or set JANSSON_ROOT to its prefix.")

if(Jansson_FOUND AND NOT TARGET Jansson::Jansson)
  add_library(Jansson::Jansson UNKNOWN IMPORTED)
  set_target_properties(Jansson::Jansson PROPERTIES
    IMPORTED_LOCATION "${JANSSON_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${JANSSON_INCLUDE_DIR}")
endif()
mark_as_advanced(JANSSON_INCLUDE_DIR JANSSON_LIBRARY)
