// ListPatterns through a router (docs/scale-out.md, "Reads"): each group's
// patterns in id order, one group after another. A page of a group comes
// from any ready replica of it (Shard.ListPatternsAfter, by the last id
// listed), so a listing goes on when the replica that served its last page
// is gone, and a page token of one router of the cluster serves at any
// other, or at the same one restarted. A replica of an older engramd pages
// only by its own page tokens: a listing it began stays on it, as every
// listing did before.
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/cluster/router.h"
#include "server/cluster/shard_calls.h"

namespace engram::cluster {

namespace {

namespace api = engram::v1;

// Where a listing through a router stands: the group it lists and the last
// id it gave of that group (0: none yet); for a replica of an older engramd
// that serves the group's pages, that replica and its own page token. Any
// router of the cluster continues it (its tokens are the cluster's), if it
// sees as many groups.
struct ListCursor {
  uint32_t groups = 0;
  uint32_t group = 0;
  uint64_t after = 0;
  std::optional<uint32_t> replica;
  std::string inner;

  // The start of `group`'s patterns.
  static ListCursor Start(uint32_t groups, uint32_t group) {
    ListCursor c;
    c.groups = groups;
    c.group = group;
    return c;
  }
  // "groups:group:after", or "groups:group:after:replica:inner".
  std::string ToString() const {
    const std::string at = absl::StrCat(groups, ":", group, ":", after);
    if (!replica.has_value()) return at;
    return absl::StrCat(at, ":", *replica, ":", inner);
  }
  static absl::StatusOr<ListCursor> Parse(absl::string_view text,
                                          uint32_t groups) {
    const std::vector<absl::string_view> parts =
        absl::StrSplit(text, absl::MaxSplits(':', 4));
    ListCursor c;
    uint32_t replica = 0;
    if ((parts.size() != 3 && parts.size() != 5) ||
        !absl::SimpleAtoi(parts[0], &c.groups) ||
        !absl::SimpleAtoi(parts[1], &c.group) ||
        !absl::SimpleAtoi(parts[2], &c.after) ||
        (parts.size() == 5 && !absl::SimpleAtoi(parts[3], &replica))) {
      return absl::InvalidArgumentError("page_token is not valid");
    }
    if (c.groups != groups || c.group >= groups) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token belongs to a listing over ", c.groups,
                       " shard groups; this router has ", groups,
                       ": start the listing again without a token"));
    }
    if (parts.size() == 5) {
      c.replica = replica;
      c.inner = std::string(parts[4]);
    }
    return c;
  }
};

// A page of `group`'s patterns after `page.after_id()` from a ready replica
// that has ListPatternsAfter, failing over as reads do. A replica of an
// older engramd answers UNIMPLEMENTED: the group's other ready replicas are
// asked in turn, and `*older` is that replica when none of them has it.
absl::Status ListAfter(ShardPool& pool, uint32_t group,
                       const v1::ListPatternsAfterRequest& page,
                       absl::Time deadline, v1::ListPatternsAfterResponse* got,
                       const Replica** older) {
  return ReadFromGroup(pool, group, [&](const Replica& first) {
    const auto list_on = [&](const Replica& r) {
      got->Clear();
      return Unary(pool, r, *r.shard, &v1::Shard::Stub::ListPatternsAfter, page,
                   got, deadline);
    };
    const absl::Status listed = list_on(first);
    if (!absl::IsUnimplemented(listed)) return listed;
    *older = &first;
    absl::StatusOr<std::vector<const Replica*>> ready =
        pool.ReadyReplicas(group);
    if (!ready.ok()) return listed;
    for (const Replica* r : *ready) {
      if (r == &first) continue;
      const absl::Status again = list_on(*r);
      if (!absl::IsUnimplemented(again) && !absl::IsUnavailable(again)) {
        return again;
      }
    }
    return listed;
  });
}

// The next page of the listing at `cursor` into `response`, moving the
// cursor on; true when its group has more.
absl::StatusOr<bool> ListGroupPage(ShardPool& pool,
                                   const api::ListPatternsRequest& request,
                                   ListCursor& cursor, absl::Time deadline,
                                   api::ListPatternsResponse* response) {
  const Replica* served = nullptr;  // A replica of an older engramd.
  if (cursor.replica.has_value()) {
    absl::StatusOr<std::vector<const Replica*>> ready =
        pool.ReadyReplicas(cursor.group);
    if (!ready.ok()) return ready.status();
    for (const Replica* candidate : *ready) {
      if (candidate->index == *cursor.replica) served = candidate;
    }
    // Gone: any other replica continues by id, if it can.
    if (served == nullptr) cursor.replica.reset();
  }
  if (!cursor.replica.has_value()) {
    v1::ListPatternsAfterRequest page;
    page.set_store(request.store());
    page.set_after_id(cursor.after);
    page.set_page_size(request.page_size());
    page.set_omit_values(request.omit_values());
    v1::ListPatternsAfterResponse got;
    const absl::Status listed =
        ListAfter(pool, cursor.group, page, deadline, &got, &served);
    if (listed.ok()) {
      if (got.patterns_size() > 0) {
        cursor.after = got.patterns(got.patterns_size() - 1).id();
      }
      response->mutable_patterns()->Swap(got.mutable_patterns());
      return got.more();
    }
    if (!absl::IsUnimplemented(listed)) return listed;
    if (cursor.after != 0) {
      return absl::UnavailableError(absl::StrCat(
          "no ready replica of shard group ", cursor.group,
          " continues this listing (", served->address,
          " runs an older engramd, which continues only the listings it "
          "began): start the listing again"));
    }
    cursor.replica = served->index;
    cursor.inner.clear();
  }
  // Pages by the older replica's own tokens: all of them from it.
  api::ListPatternsRequest page = request;
  page.set_page_token(cursor.inner);
  if (absl::Status s =
          Unary(pool, *served, *served->engram,
                &api::Engram::Stub::ListPatterns, page, response, deadline);
      !s.ok()) {
    return s;
  }
  if (response->patterns_size() > 0) {
    cursor.after = response->patterns(response->patterns_size() - 1).id();
  }
  cursor.inner = response->next_page_token();
  response->clear_next_page_token();
  return !cursor.inner.empty();
}

}  // namespace

grpc::Status Router::ListPatterns(Ctx* context,
                                  const api::ListPatternsRequest* request,
                                  api::ListPatternsResponse* response) {
  rpc::Call call(policy_, "ListPatterns", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  const std::string listing = rpc::PageTokens::Patterns(request->store());
  ListCursor cursor = ListCursor::Start(pool_->groups(), 0);
  if (!request->page_token().empty()) {
    absl::StatusOr<std::string> opened =
        tokens_.Open(listing, request->page_token());
    if (!opened.ok()) return call.Done(opened.status());
    absl::StatusOr<ListCursor> parsed =
        ListCursor::Parse(*opened, pool_->groups());
    if (!parsed.ok()) return call.Done(parsed.status());
    cursor = *std::move(parsed);
  }
  const absl::Time deadline = DeadlineOf(context);
  for (; cursor.group < pool_->groups();
       cursor = ListCursor::Start(cursor.groups, cursor.group + 1)) {
    absl::StatusOr<bool> more =
        ListGroupPage(*pool_, *request, cursor, deadline, response);
    if (!more.ok()) return call.Done(more.status());
    if (*more) {
      response->set_next_page_token(tokens_.Issue(listing, cursor.ToString()));
      return call.Done(absl::OkStatus());
    }
    if (response->patterns_size() > 0) {
      if (cursor.group + 1 < pool_->groups()) {
        response->set_next_page_token(tokens_.Issue(
            listing,
            ListCursor::Start(cursor.groups, cursor.group + 1).ToString()));
      }
      return call.Done(absl::OkStatus());
    }
  }
  return call.Done(absl::OkStatus());
}

}  // namespace engram::cluster
