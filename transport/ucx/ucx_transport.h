// The UCX transport: UCP active messages over one worker per Transport, a listener on
// host:port, endpoints with peer error handling, event-driven progress (worker arm + poll on
// the worker's event fd, so an idle peer sleeps in the kernel). Compiled only where libucx-dev
// was found (MYCEL_HAVE_UCX); transport/factory.cpp dispatches "ucx://" here.
//
// Threading: a UcxTransport is driven by one thread at a time (its worker is created
// UCS_THREAD_MODE_SINGLE); callers that share one across threads serialise the calls.
// See docs/transport.md for the protocol on the wire and what the statistics measure.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "transport/transport.h"

namespace mycel::transport {

// Listens at "ucx://HOST:PORT" (PORT 0: any free port; local_address() reports the real one).
Result<std::unique_ptr<Transport>> make_ucx_transport(std::string_view listen,
                                                      const Options& opt = {});

// For benchmarks and diagnostics: UCX's description of the endpoint to `peer` (lanes and the
// transports/devices they use, from ucp_ep_print_info), or an error when there is none.
Result<std::string> ucx_describe_endpoint(Transport& t, const Address& peer);

// Buffer reuse, for senders and receivers that move large frames at a high rate (fresh
// vectors of hundreds of MiB cost page faults and zeroing, more than UCX's copy itself):
// - return_sent: kSendComplete / kSendFailed events give the sent bytes back in
//   event.frame.bytes, so the caller can refill and resend them;
// - pool_bytes: up to that many bytes of vectors handed to ucx_recycle_buffer are kept and
//   reused (without zeroing) for incoming frames of 4 KiB and more.
// Reused buffers also stay in UCX's memory registration cache, so zero-copy transports do not
// register them again. kInvalidArgument when t is not a ucx transport.
Status ucx_set_buffer_reuse(Transport& t, bool return_sent, size_t pool_bytes);
void ucx_recycle_buffer(Transport& t, std::vector<uint8_t>&& bytes);

// The UCX settings this transport applies as defaults (environment variable name, value), each
// only where the caller has not set that variable: UCX_RNDV_THRESH=256K on hosts without RDMA
// devices. Benchmarks pass them to ucx_perftest so that both run with the same settings.
std::vector<std::pair<std::string, std::string>> ucx_config_defaults();

// What the trust guards of a ucx transport have counted (docs/security.md): the bootstrap's
// handshakes (accepted, completed, dropped by cause) and the UCX messages refused after it.
struct TrustStats {
  uint64_t accepted = 0, completed_in = 0, completed_out = 0, failed_out = 0;
  uint64_t refused_pending = 0, refused_source = 0, refused_connections = 0;
  uint64_t accept_backoffs = 0, timeouts = 0, bad_messages = 0, truncated = 0;
  uint64_t auth_failures = 0, unknown_keys = 0, bad_source = 0;
  uint64_t unknown_tag = 0;         // UCX messages whose session tag names no connection
  uint64_t bad_headers = 0;         // UCX messages with a bad transport header
  uint64_t reorder_overflows = 0;   // connections closed for holding too much out of order
  size_t pending_handshakes = 0;
  size_t connections = 0;
  bool authenticated = false;       // a key file was given
};
// kInvalidArgument when t is not a ucx transport.
Result<TrustStats> ucx_trust_stats(const Transport& t);

// Splits "ucx://host:port" into host and port; kInvalidArgument on anything else.
Status parse_ucx_address(std::string_view addr, std::string* host, uint16_t* port);

}  // namespace mycel::transport
