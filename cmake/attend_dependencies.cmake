# Finds what libattend links privately: OpenMP and OpenBLAS (the unfused baseline and the peer we
# measure against). Used by the build and by the installed package (needed for static builds).
include_guard(GLOBAL)
find_package(OpenMP REQUIRED COMPONENTS CXX)
if(NOT TARGET attend::openblas)
  # Prefer the OpenMP build of OpenBLAS: it shares attend's OpenMP thread pool. The pthreads
  # build's workers and OpenMP's spinning workers fight over the cores when BLAS calls and OpenMP
  # regions alternate (unfused_cpu ran 2-7x slower on 2 cores with it).
  find_library(ATTEND_OPENBLAS_LIBRARY NAMES openblas NO_DEFAULT_PATH
               PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
  find_path(ATTEND_OPENBLAS_INCLUDE_DIR cblas.h NO_DEFAULT_PATH
            PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp)
  if(NOT ATTEND_OPENBLAS_LIBRARY OR NOT ATTEND_OPENBLAS_INCLUDE_DIR)
    find_library(ATTEND_OPENBLAS_LIBRARY NAMES openblas)
    find_path(ATTEND_OPENBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-openmp openblas-pthread)
  endif()
  if(NOT ATTEND_OPENBLAS_LIBRARY OR NOT ATTEND_OPENBLAS_INCLUDE_DIR)
    message(FATAL_ERROR "attend needs OpenBLAS (Debian: apt-get install libopenblas-openmp-dev; or run scripts/setup)")
  endif()
  message(STATUS "attend: OpenBLAS ${ATTEND_OPENBLAS_LIBRARY}")
  add_library(attend::openblas UNKNOWN IMPORTED)
  set_target_properties(attend::openblas PROPERTIES IMPORTED_LOCATION ${ATTEND_OPENBLAS_LIBRARY}
                        INTERFACE_INCLUDE_DIRECTORIES ${ATTEND_OPENBLAS_INCLUDE_DIR})
endif()
