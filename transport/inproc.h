// The in-process transport: peers are Transport objects of one process, found by name in a
// process-wide registry ("inproc://NAME"). A send moves the caller's vector into the
// receiver's queue (no copy); its bytes stay in the sender's in-flight budget until the
// receiver takes the frame out with poll(), which then completes the send (kSendComplete to
// the sender). So a receiver that polls slowly holds its senders at max_inflight_bytes each.
//
// Semantics shared with ucx (transport/transport.h), and those particular to inproc:
// - A connection is made on the first send to a peer: both sides get kPeerUp (the receiver's
//   before that first frame). disconnect() / close() give kPeerDown on both sides.
// - A send to a name nobody listens at returns kUnavailable at once (nothing is queued).
// - Frames a closed receiver never polled fail back to their senders (kSendFailed).
// - A frame larger than the receiver's max_frame_bytes is refused: kSendFailed to the
//   sender, rejected_frames on the receiver.
// - One frame larger than max_inflight_bytes may be sent when nothing else is in flight to
//   that peer (otherwise it could never be sent at all); in-flight bytes per peer stay below
//   max(max_inflight_bytes, largest frame).
// - A send whose frame the receiver has not polled within send_timeout_s fails with kTimeout:
//   the frame is withdrawn from the receiver's queue (never delivered late).
// - The link estimate (transport/link_estimator.h, as on ucx): a send completes when the
//   receiver takes the frame, so bandwidth_Bps is the receiver's pace while frames wait for
//   it, and rtt_s (no wire, no round trip) is the delivery latency: from the link starting on
//   a frame to the receiver taking it.
// - Send buffers are plain vectors, reused from the frames the caller recycle()s.
// - Thread-safe: any thread may call any method; poll() waits on a condition variable.
#pragma once

#include <memory>
#include <string_view>

#include "common/status.h"
#include "transport/transport.h"

namespace mycel::transport {

// Listens at "inproc://NAME"; "inproc://" picks a unique name. kUnavailable when NAME is taken.
Result<std::unique_ptr<Transport>> make_inproc_transport(std::string_view listen,
                                                         const Options& opt = {});

}  // namespace mycel::transport
