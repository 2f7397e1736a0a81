# Third-party dependencies, all from Debian packages (scripts/setup.sh installs them).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(CLI11 REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(nlohmann_json REQUIRED)

# cpp-httplib (libcpp-httplib-dev): the control endpoint and `mycel ctl` / `mycel top`. Debian
# ships it compiled (libcpp-httplib.so, with OpenSSL, zlib and brotli): its pkg-config flags
# must be used, or the classes' layout differs from the library's.
pkg_check_modules(HTTPLIB IMPORTED_TARGET cpp-httplib)
if(NOT HTTPLIB_FOUND)
  message(FATAL_ERROR "cpp-httplib not found: run scripts/setup.sh (package libcpp-httplib-dev)")
endif()
set(MYCEL_HAVE_HTTPLIB ON)

pkg_check_modules(ZSTD IMPORTED_TARGET libzstd)
set(MYCEL_HAVE_ZSTD ${ZSTD_FOUND})
if(NOT ZSTD_FOUND)
  message(FATAL_ERROR "libzstd not found: run scripts/setup.sh (package libzstd-dev)")
endif()

# BLAS: OpenBLAS (libopenblas-dev) for the CPU GEMMs.
pkg_check_modules(OPENBLAS IMPORTED_TARGET openblas)
if(OPENBLAS_FOUND)
  set(MYCEL_HAVE_BLAS ON)
  add_library(mycel_blas INTERFACE)
  target_link_libraries(mycel_blas INTERFACE PkgConfig::OPENBLAS)
  target_compile_definitions(mycel_blas INTERFACE MYCEL_BLAS_IS_OPENBLAS=1)
else()
  message(FATAL_ERROR "OpenBLAS not found: run scripts/setup.sh (package libopenblas-dev)")
endif()

# UCX (libucx-dev): the deployment transport. Optional: without it only inproc is built.
pkg_check_modules(UCX IMPORTED_TARGET ucx)
set(MYCEL_HAVE_UCX ${UCX_FOUND})

# libsodium (libsodium-dev): the UCX transport's authenticated bootstrap (docs/security.md).
pkg_check_modules(SODIUM IMPORTED_TARGET libsodium)
if(MYCEL_HAVE_UCX AND NOT SODIUM_FOUND)
  message(FATAL_ERROR "libsodium not found: run scripts/setup.sh (package libsodium-dev)")
endif()

if(MYCEL_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
