// make_transport: the address scheme picks the implementation. UCX is optional at build time
// (transport/CMakeLists.txt defines MYCEL_HAVE_UCX where libucx-dev was found); this file is
// the one place that knows.
#include <fmt/format.h>

#include "transport/inproc.h"
#include "transport/transport.h"

#if MYCEL_HAVE_UCX
#include "transport/ucx/bootstrap.h"
#include "transport/ucx/ucx_transport.h"
#endif

namespace mycel::transport {

Result<std::unique_ptr<Transport>> make_transport(std::string_view listen, const Options& opt) {
  if (listen.starts_with("inproc://")) return make_inproc_transport(listen, opt);
  if (listen.starts_with("ucx://")) {
#if MYCEL_HAVE_UCX
    return make_ucx_transport(listen, opt);
#else
    return Error(Code::kUnavailable,
                 fmt::format("cannot listen at {}: this build has no UCX (install libucx-dev "
                             "and reconfigure)", listen));
#endif
  }
  return Error(Code::kInvalidArgument,
               fmt::format("'{}' has no known transport scheme (inproc://NAME or "
                           "ucx://HOST:PORT)", listen));
}

Status make_key_file(const std::string& path, uint32_t id) {
#if MYCEL_HAVE_UCX
  return write_key_file(path, id);
#else
  (void)id;
  return Error(Code::kUnavailable, fmt::format("cannot write the key file {}: this build has no UCX and "
                                               "libsodium (the bootstrap that uses it)", path));
#endif
}

}  // namespace mycel::transport
