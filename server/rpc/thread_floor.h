// The fewest of gRPC's threads that calls holding none of them are left.
#ifndef ENGRAM_SERVER_RPC_THREAD_FLOOR_H_
#define ENGRAM_SERVER_RPC_THREAD_FLOOR_H_

namespace engram::rpc {

// gRPC's synchronous server serves a call only while another of its
// threads is left to poll, and the thread of the call before may not be
// back yet: with two left, one read right after another was refused now
// and then ("Server Threadpool Exhausted"). Streams and writes together
// leave at least this many (HeldShare), and answers nobody takes are cut
// sooner once they leave fewer (AnswerWatch::Options::min_free).
constexpr int kFewestThreadsLeft = 3;

}  // namespace engram::rpc

#endif  // ENGRAM_SERVER_RPC_THREAD_FLOOR_H_
