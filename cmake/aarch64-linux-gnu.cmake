# Cross-compiling for aarch64 (a Jetson's CPU, an ARM server) with Debian's cross compiler and
# the arm64 -dev packages installed by multiarch (scripts/cross-aarch64.sh installs both).
# No CMAKE_SYSROOT: multiarch puts the arm64 libraries in /usr/lib/aarch64-linux-gnu and the
# headers in /usr/include, where the cross compiler looks already; the C library comes from
# /usr/aarch64-linux-gnu (libc6-dev-arm64-cross).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# pkg-config sees only the arm64 .pc files (and the architecture-independent ones).
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_PATH} "")

# Built programs (tests, gtest discovery, the bench smoke runs) run under qemu-user, with the
# arm64 C library that multiarch installed (libc6:arm64, found from / as on a board). Not with
# -L /usr/aarch64-linux-gnu: under Debian 12's qemu-user 7.2, a dynamically linked program that
# starts a thread spins forever on the cross toolchain's older copy (libc6-arm64-cross) and exits
# at once on the multiarch one; the link still uses the cross copy, the same glibc 2.36.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /)
