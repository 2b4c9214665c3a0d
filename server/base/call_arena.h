// Arena options for the messages of one large call (a Retrieve's request or
// answer: hundreds of queries or results, each a message of its own): the
// blocks start at 16 KiB and double up to 4 MiB, so that a message of a few
// MiB takes a handful of allocations instead of one (and a free) per
// submessage.
//
//   google::protobuf::Arena arena(CallArenaOptions());
//   auto* request =
//       google::protobuf::Arena::CreateMessage<v1::RetrieveRequest>(&arena);
//
// Thread-safe: a pure function.
#ifndef ENGRAM_SERVER_BASE_CALL_ARENA_H_
#define ENGRAM_SERVER_BASE_CALL_ARENA_H_

#include <cstddef>

#include "google/protobuf/arena.h"

namespace engram {

inline google::protobuf::ArenaOptions CallArenaOptions() {
  google::protobuf::ArenaOptions options;
  options.start_block_size = size_t{16} << 10;
  options.max_block_size = size_t{4} << 20;
  return options;
}

}  // namespace engram

#endif  // ENGRAM_SERVER_BASE_CALL_ARENA_H_
