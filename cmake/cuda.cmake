# Decide whether to build the CUDA kernels (sets EXPRFAST_WITH_CUDA) and prepare the toolchain.
# A CPU-only torch must never enable the CUDA language: its CMake config would then look for CUDA
# libraries that do not exist.
set(EXPRFAST_WITH_CUDA OFF)
if(EXPRFAST_CUDA STREQUAL "OFF")
  message(STATUS "exprfast: CUDA kernels disabled (EXPRFAST_CUDA=OFF)")
  return()
endif()

include(CheckLanguage)
if(TORCH_CUDA_VERSION STREQUAL "")
  set(_why "the installed torch ${EXPRFAST_TORCH_VERSION} is a CPU-only build")
else()
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    set(_why "no nvcc was found (set CUDACXX or put nvcc on PATH)")
  endif()
endif()
if(NOT DEFINED _why AND CMAKE_VERSION VERSION_LESS 4.0)
  # torch's CMake config asks for C++20, which older CMake cannot request from nvcc.
  set(_why "CMake ${CMAKE_VERSION} cannot build CUDA C++20 with nvcc (pip install 'cmake>=4')")
endif()
if(DEFINED _why)
  if(EXPRFAST_CUDA STREQUAL "ON")
    message(FATAL_ERROR "exprfast: EXPRFAST_CUDA=ON but ${_why}")
  endif()
  message(STATUS "exprfast: building CPU kernels only: ${_why}")
  return()
endif()

# nvcc 12+/13 refuses the pre-Volta targets of torch's default list: default to Ampere..Hopper + PTX.
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(ENV{TORCH_CUDA_ARCH_LIST} "8.0;8.6;8.9;9.0+PTX")
endif()
message(STATUS "exprfast: CUDA kernels for TORCH_CUDA_ARCH_LIST=$ENV{TORCH_CUDA_ARCH_LIST}")

# The pip CUDA runtime packages (nvidia/cu*/ in site-packages) carry the cuBLAS/cuDNN/... headers
# and libraries that torch's CMake config asks for; a bare CUDA toolkit (nvcc + cudart) lacks them.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
          "import glob, os, nvidia; print(';'.join(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], 'cu*')))))"
  OUTPUT_VARIABLE _nvidia_roots OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
foreach(_root IN LISTS _nvidia_roots)
  if(EXISTS "${_root}/include")
    list(APPEND EXPRFAST_CUDA_EXTRA_INCLUDES "${_root}/include")
    # Unversioned lib*.so links so that find_library() sees the pip packages' lib*.so.N files.
    set(_links "${CMAKE_BINARY_DIR}/cuda_lib_links")
    file(MAKE_DIRECTORY "${_links}")
    file(GLOB _libs "${_root}/lib/lib*.so.*")
    foreach(_lib IN LISTS _libs)
      get_filename_component(_name "${_lib}" NAME)
      string(REGEX REPLACE "\\.so\\..*$" ".so" _plain "${_name}")
      if(NOT EXISTS "${_links}/${_plain}")
        file(CREATE_LINK "${_lib}" "${_links}/${_plain}" SYMBOLIC)
      endif()
    endforeach()
    list(APPEND CMAKE_LIBRARY_PATH "${_links}")
  endif()
endforeach()
set(CMAKE_CUDA_STANDARD 20)
set(CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS} --extended-lambda --expt-relaxed-constexpr")
enable_language(CUDA)
# torch's CMake config looks for the toolkit here; nvcc itself may be a wrapper script on PATH.
set(CUDA_TOOLKIT_ROOT_DIR "${CMAKE_CUDA_COMPILER_TOOLKIT_ROOT}")
include_directories(${EXPRFAST_CUDA_EXTRA_INCLUDES})
set(EXPRFAST_WITH_CUDA ON)
