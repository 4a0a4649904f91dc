# The CUDA backends (src/cuda), built into libattend when ATTEND_CUDA is ON.
#
# flash_cuda's tensor-core kernels are instantiated from src/cuda/flash_kernels.txt: one generated
# translation unit per (dtype, width) row (parallel nvcc jobs, small recompiles), plus a generated
# dispatch list the host code includes, so the table is the single source of both.
#
# cudart is linked statically: libattend then needs no libcudart.so of a matching version at run
# time (the driver is the only run-time dependency), and streams from other runtimes (PyTorch's)
# are driver handles that work across runtime copies.
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

set(_attend_cuda_gen ${PROJECT_BINARY_DIR}/generated)
set(_attend_table ${PROJECT_SOURCE_DIR}/src/cuda/flash_kernels.txt)
set_property(DIRECTORY ${PROJECT_SOURCE_DIR} APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_attend_table})
file(STRINGS ${_attend_table} _attend_rows REGEX "^[ \t]*[a-z]")
set(_attend_flash_sources "")
set(ATTEND_SM90_SOURCES "")
set(_attend_dispatch "// Generated from src/cuda/flash_kernels.txt by cmake/attend_cuda.cmake; do not edit.\n")
# The Hopper rows (`sm90 DTYPE WIDTH`) are built only when the architectures include sm_90a: their
# kernels use wgmma/setmaxnreg, which exist only there (Note [Hopper path]).
set(_attend_sm90a OFF)
if("90a" IN_LIST CMAKE_CUDA_ARCHITECTURES OR "90a-real" IN_LIST CMAKE_CUDA_ARCHITECTURES)
  set(_attend_sm90a ON)
endif()
foreach(_row IN LISTS _attend_rows)
  if(NOT _row MATCHES "^[ \t]*(sm90[ \t]+)?(f16|bf16)[ \t]+([0-9]+)[ \t]*$")
    message(FATAL_ERROR "flash_kernels.txt: cannot parse '${_row}' (want: [sm90] f16|bf16 WIDTH)")
  endif()
  set(_dt ${CMAKE_MATCH_2})
  set(_w ${CMAKE_MATCH_3})
  if(CMAKE_MATCH_1)  # a Hopper row
    if(NOT _attend_sm90a)
      continue()
    endif()
    set(_kind sm90)
    set(_launch "bool launch_flash_sm90")
    set(_launch2 "")
    set(_row_macro ATTEND_FLASH_SM90_ROW)
    set(_name flash_sm90_${_dt}_${_w})
  else()
    set(_kind tc)
    set(_launch "void launch_flash_tc")
    set(_launch2 "void launch_flash_tc_decode")  # Note [Decode tile]
    set(_row_macro ATTEND_FLASH_ROW)
    set(_name flash_${_dt}_${_w})
  endif()
  set(_src ${_attend_cuda_gen}/${_name}.cu)
  set(_second "")
  if(_launch2)
    set(_second "template ${_launch2}<elem::${_dt}, ${_w}>(const flash_params&, void*);\n")
  endif()
  file(CONFIGURE OUTPUT ${_src} CONTENT
"// Generated from src/cuda/flash_kernels.txt by cmake/attend_cuda.cmake; do not edit.
#include \"cuda/flash_${_kind}.cuh\"
namespace attend::cuda {
template ${_launch}<elem::${_dt}, ${_w}>(const flash_params&, void*);
${_second}}  // namespace attend::cuda
")
  list(APPEND _attend_flash_sources ${_src})
  if(_kind STREQUAL "sm90")
    list(APPEND ATTEND_SM90_SOURCES ${_src})  # tests/CMakeLists.txt checks their wgmma pipelines
  endif()
  string(APPEND _attend_dispatch "${_row_macro}(${_dt}, ${_w})\n")
endforeach()
file(CONFIGURE OUTPUT ${_attend_cuda_gen}/cuda/flash_dispatch.inc CONTENT "${_attend_dispatch}")

add_library(attend_cuda OBJECT
  src/cuda/device.cpp
  src/cuda/flash_backend.cpp
  src/cuda/flash_generic.cu
  ${_attend_flash_sources})
target_include_directories(attend_cuda PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/src ${_attend_cuda_gen})
target_link_libraries(attend_cuda PRIVATE attend_warnings CUDA::cudart_static)
target_compile_features(attend_cuda PRIVATE cxx_std_20)
set_target_properties(attend_cuda PROPERTIES POSITION_INDEPENDENT_CODE ON CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON)  # CMake 3.25 has no CUDA20 for nvcc
target_compile_options(attend_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --expt-relaxed-constexpr -lineinfo>
  $<$<AND:$<BOOL:${ATTEND_WERROR}>,$<COMPILE_LANGUAGE:CUDA>>:--Werror=all-warnings>)

# cuDNN's fused SDPA (backend `cudnn`): needs cudnn_graph.h and the cudnn-frontend headers
# (scripts/fetch-cudnn-frontend puts them in third_party/). libcudnn itself is opened at run time
# (dlopen), so a build without the library still links and the backend explains what is missing.
find_path(ATTEND_CUDNN_INCLUDE_DIR cudnn_graph.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV CUDNN_INCLUDE_DIR)
find_path(ATTEND_CUDNN_FRONTEND_INCLUDE_DIR cudnn_frontend.h
          HINTS ${PROJECT_SOURCE_DIR}/third_party/cudnn_frontend/include ENV CUDNN_FRONTEND_INCLUDE_DIR)
if(ATTEND_CUDNN_INCLUDE_DIR AND ATTEND_CUDNN_FRONTEND_INCLUDE_DIR AND EXISTS ${PROJECT_SOURCE_DIR}/src/cuda/cudnn_backend.cpp)
  set(ATTEND_HAVE_CUDNN ON)
  target_sources(attend_cuda PRIVATE src/cuda/cudnn_backend.cpp)
  target_include_directories(attend_cuda SYSTEM PRIVATE ${ATTEND_CUDNN_INCLUDE_DIR} ${ATTEND_CUDNN_FRONTEND_INCLUDE_DIR})
  target_compile_definitions(attend_cuda PRIVATE NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING)
  target_link_libraries(attend_cuda PRIVATE ${CMAKE_DL_LIBS})
  message(STATUS "attend: cudnn backend ON (${ATTEND_CUDNN_INCLUDE_DIR}, ${ATTEND_CUDNN_FRONTEND_INCLUDE_DIR})")
else()
  set(ATTEND_HAVE_CUDNN OFF)
  message(STATUS "attend: cudnn backend OFF (cudnn_graph.h: ${ATTEND_CUDNN_INCLUDE_DIR}; cudnn_frontend.h: "
                 "${ATTEND_CUDNN_FRONTEND_INCLUDE_DIR}; run scripts/fetch-cudnn-frontend)")
endif()

target_sources(attend PRIVATE $<TARGET_OBJECTS:attend_cuda>)
target_link_libraries(attend PRIVATE CUDA::cudart_static ${CMAKE_DL_LIBS})
target_compile_definitions(attend PRIVATE ATTEND_HAVE_CUDA $<$<BOOL:${ATTEND_HAVE_CUDNN}>:ATTEND_HAVE_CUDNN>)

# The GPU benchmark's C++ half (bench/gpu.py drives it; scripts/gpu-check runs both).
if(ATTEND_BUILD_TOOLS)
  add_executable(attend_gpu_bench ${PROJECT_SOURCE_DIR}/bench/gpu_bench.cpp)
  find_package(Threads REQUIRED)  # (its random fill: a share per host thread)
  target_link_libraries(attend_gpu_bench PRIVATE attend::attend attend_warnings CUDA::cudart_static Threads::Threads)
  set_target_properties(attend_gpu_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
  # The host's cost of a call, stage by stage (bench/host_bench.cpp; scripts/gpu-check's `host` stage).
  add_executable(attend_host_bench ${PROJECT_SOURCE_DIR}/bench/host_bench.cpp)
  target_include_directories(attend_host_bench PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(attend_host_bench PRIVATE attend::attend attend_warnings CUDA::cudart_static)
  set_target_properties(attend_host_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
endif()

# flash_cuda's tile-shape sweep (bench/flash_tune.cu; scripts/gpu-check's `tune` stage). Off by
# default: six extra kernel instantiations are compile time CI need not pay.
option(ATTEND_BUILD_FLASH_TUNE "Build attend_flash_tune (flash_cuda tile-shape sweep)" OFF)
if(ATTEND_BUILD_FLASH_TUNE)
  add_executable(attend_flash_tune ${PROJECT_SOURCE_DIR}/bench/flash_tune.cu)
  target_include_directories(attend_flash_tune PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(attend_flash_tune PRIVATE attend::attend CUDA::cudart_static)
  target_compile_options(attend_flash_tune PRIVATE --expt-relaxed-constexpr -lineinfo
                         $<$<BOOL:${ATTEND_WERROR}>:--Werror=all-warnings> -Xcompiler=-Wall,-Wextra)
  set_target_properties(attend_flash_tune PROPERTIES CUDA_STANDARD 17 RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
endif()
