# Finds what libattend links privately: OpenMP and OpenBLAS (the unfused baseline and the peer we
# measure against). Used by the build and by the installed package (needed for static builds).
include_guard(GLOBAL)
find_package(OpenMP REQUIRED COMPONENTS CXX)
if(NOT TARGET attend::openblas)
  find_package(PkgConfig QUIET)
  if(PkgConfig_FOUND)
    pkg_check_modules(ATTEND_OPENBLAS QUIET IMPORTED_TARGET openblas)
  endif()
  if(ATTEND_OPENBLAS_FOUND)
    add_library(attend::openblas INTERFACE IMPORTED)
    target_link_libraries(attend::openblas INTERFACE PkgConfig::ATTEND_OPENBLAS)
  else()
    find_library(ATTEND_OPENBLAS_LIBRARY NAMES openblas)
    find_path(ATTEND_OPENBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread
              x86_64-linux-gnu/openblas-pthread)
    if(NOT ATTEND_OPENBLAS_LIBRARY OR NOT ATTEND_OPENBLAS_INCLUDE_DIR)
      message(FATAL_ERROR "attend needs OpenBLAS (Debian: apt-get install libopenblas-dev; or run scripts/setup)")
    endif()
    add_library(attend::openblas UNKNOWN IMPORTED)
    set_target_properties(attend::openblas PROPERTIES IMPORTED_LOCATION ${ATTEND_OPENBLAS_LIBRARY}
                          INTERFACE_INCLUDE_DIRECTORIES ${ATTEND_OPENBLAS_INCLUDE_DIR})
  endif()
endif()
