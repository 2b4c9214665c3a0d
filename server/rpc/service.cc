#include "server/rpc/service.h"

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/arena.h"
#include "server/base/call_arena.h"
#include "server/base/clip.h"
#include "server/base/log.h"
#include "server/rpc/backup_stream.h"
#include "server/rpc/call.h"
#include "server/rpc/client_stream.h"
#include "server/rpc/convert.h"
#include "server/rpc/import_stream.h"
#include "server/store/backup.h"
#include "server/store/retrieve.h"

namespace engram::rpc {

EngramService::EngramService(store::StoreRegistry* registry,
                             jobs::JobRunner* jobs, const CallPolicy* policy,
                             ServiceOptions options)
    : registry_(registry),
      jobs_(jobs),
      policy_(policy),
      options_(std::move(options)),
      metrics_(policy->metrics),
      own_handlers_(options_.handlers != nullptr
                        ? nullptr
                        : std::make_unique<Handlers>(options_.handler_threads)),
      handlers_(options_.handlers != nullptr ? options_.handlers
                                             : own_handlers_.get()) {}

void CountStore(metrics::Metrics& metrics, const store::Store& store) {
  std::shared_ptr<const store::StoreView> view = store.view();
  metrics.SetStoreSize(store.name(), view->size(),
                       static_cast<double>(view->memory_bytes()));
  metrics.SetNorms(store.name(), view->norms().max_norm,
                   view->norms().mean_norm, view->norms().max_feature_norm);
}

void EngramService::StoreToProto(const store::Store& store, v1::Store& out) {
  ToProto(*store.view(), out);
  absl::StatusOr<v1::FitStatus> fit = jobs_->FitStatus(store.name());
  if (fit.ok()) *out.mutable_fit() = *std::move(fit);
}

void EngramService::Added(const store::Store& store, size_t count) {
  CountStore(*metrics_, store);
  jobs_->PatternsAdded(store.name(), count);
}

grpc::Status EngramService::CreateStore(grpc::ServerContext* context,
                                        const v1::CreateStoreRequest* request,
                                        v1::Store* response) {
  Call call(policy_, "CreateStore", request->store().name());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<store::StoreSettings> settings =
      store::SettingsFromProto(request->store(), /*fill_defaults=*/true);
  if (!settings.ok()) return call.Done(settings.status());
  // Output-only fields a client sent are not the store's.
  settings->create_time = absl::Now();
  settings->calibration_report.Clear();
  absl::StatusOr<std::shared_ptr<store::Store>> created =
      registry_->Create(*settings);
  if (!created.ok()) return call.Done(created.status());
  StoreToProto(**created, *response);
  CountStore(*metrics_, **created);
  call.Wrote(*created);
  return call.Done(absl::OkStatus());
}

grpc::Status EngramService::GetStore(grpc::ServerContext* context,
                                     const v1::GetStoreRequest* request,
                                     v1::Store* response) {
  Call call(policy_, "GetStore", request->name());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->name());
  if (!found.ok()) {
    for (const store::StoreRegistry::DamagedStore& d : registry_->Damaged()) {
      if (d.name == request->name()) {
        response->set_name(d.name);
        response->set_state(v1::Store::DAMAGED);
        response->set_state_detail(std::string(d.status.message()));
        return call.Done(absl::OkStatus());
      }
    }
    return call.Done(found.status());
  }
  StoreToProto(**found, *response);
  return call.Done(absl::OkStatus());
}

grpc::Status EngramService::ListStores(grpc::ServerContext* context,
                                       const v1::ListStoresRequest* request,
                                       v1::ListStoresResponse* response) {
  Call call(policy_, "ListStores", "");
  if (!call.Admit(*context, request)) return call.Refused();
  std::string after;
  if (!request->page_token().empty()) {
    absl::StatusOr<std::string> parsed =
        tokens_.Open(PageTokens::Stores(), request->page_token());
    if (!parsed.ok()) return call.Done(parsed.status());
    after = *parsed;
  }
  bool more = false;
  absl::StatusOr<std::vector<std::shared_ptr<store::Store>>> page =
      registry_->List(after, PageSize(request->page_size()), more);
  if (!page.ok()) return call.Done(page.status());
  for (const auto& s : *page) {
    StoreToProto(*s, *response->add_stores());
  }
  if (more) {
    response->set_next_page_token(
        tokens_.Issue(PageTokens::Stores(), page->back()->name()));
  }
  return call.Done(absl::OkStatus());
}

grpc::Status EngramService::UpdateStore(grpc::ServerContext* context,
                                        const v1::UpdateStoreRequest* request,
                                        v1::Store* response) {
  Call call(policy_, "UpdateStore", request->store().name());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store().name());
  if (!found.ok()) return call.Done(found.status());
  absl::Status status =
      (*found)->UpdateSettings([request](store::StoreSettings& settings) {
        return store::ApplyUpdateMask(request->store(), request->update_mask(),
                                      settings);
      });
  if (!status.ok()) return call.Done(status);
  StoreToProto(**found, *response);
  call.Wrote(*found);
  return call.Done(absl::OkStatus());
}

grpc::Status EngramService::DeleteStore(grpc::ServerContext* context,
                                        const v1::DeleteStoreRequest* request,
                                        v1::DeleteStoreResponse*) {
  Call call(policy_, "DeleteStore", request->name());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::Status status = registry_->Delete(request->name());
  if (status.ok()) {
    jobs_->StoreDeleted(request->name());
    metrics_->RemoveStore(request->name());
    metrics_->SetDamagedStores(registry_->Damaged().size());
  }
  return call.Done(status);
}

grpc::Status EngramService::StreamedAddPatterns(
    grpc::ServerContext* context,
    grpc::ServerUnaryStreamer<v1::AddPatternsRequest, v1::AddPatternsResponse>*
        streamer) {
  Call call(policy_, "AddPatterns", "");
  return ServeUnaryWrite(
      call, *context, *streamer,
      [&](const v1::AddPatternsRequest& request,
          v1::AddPatternsResponse& response) {
        absl::StatusOr<std::shared_ptr<store::Store>> found =
            registry_->Get(request.store());
        if (!found.ok()) return call.Done(found.status());
        std::vector<store::Pattern> patterns;
        if (absl::Status status = FromProto(request.patterns(), patterns);
            !status.ok()) {
          return call.Done(status);
        }
        absl::StatusOr<std::vector<uint64_t>> ids =
            (*found)->AddOwned(std::move(patterns));
        if (!ids.ok()) return call.Done(ids.status());
        response.mutable_ids()->Assign(ids->begin(), ids->end());
        response.set_pattern_count((*found)->view()->size());
        Added(**found, ids->size());
        call.Wrote(*found);
        return call.Done(absl::OkStatus());
      });
}

grpc::Status EngramService::ImportPatterns(
    grpc::ServerContext* context,
    grpc::ServerReader<v1::ImportPatternsRequest>* reader,
    v1::ImportPatternsResponse* response) {
  Call call(policy_, "ImportPatterns", "");
  if (!call.Admit(*context, nullptr)) return call.Refused();
  v1::ImportPatternsRequest message;
  ImportStream stream(policy_->max_message_bytes, &call);
  std::shared_ptr<store::Store> target;
  uint64_t first_id = 0, last_id = 0;
  std::vector<store::Pattern> patterns;
  while (stream.Read(*reader, message)) {
    if (absl::Status s = stream.Next(message); !s.ok()) return call.Done(s);
    if (!target) {
      absl::StatusOr<std::shared_ptr<store::Store>> found =
          registry_->Get(stream.store());
      if (!found.ok()) return call.Done(stream.Failed(found.status()));
      target = *found;
    }
    if (message.patterns_size() == 0) continue;
    absl::Status converted = FromProto(message.patterns(), patterns);
    absl::StatusOr<std::vector<uint64_t>> ids =
        converted.ok() ? target->AddOwned(std::move(patterns))
                       : absl::StatusOr<std::vector<uint64_t>>(converted);
    if (!ids.ok()) {
      Added(*target, 0);
      return call.Done(stream.Failed(ids.status()));
    }
    for (uint64_t id : *ids) {
      first_id = first_id == 0 ? id : std::min(first_id, id);
      last_id = std::max(last_id, id);
    }
    stream.Committed(ids->size());
    Added(*target, ids->size());
  }
  if (absl::Status s = stream.End(); !s.ok()) return call.Done(s);
  response->set_patterns_added(stream.added());
  response->set_batches(stream.messages());
  response->set_pattern_count(target->view()->size());
  response->set_first_id(first_id);
  response->set_last_id(last_id);
  call.Wrote(target);
  return call.Done(absl::OkStatus());
}

grpc::Status EngramService::GetPattern(grpc::ServerContext* context,
                                       const v1::GetPatternRequest* request,
                                       v1::Pattern* response) {
  Call call(policy_, "GetPattern", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  absl::StatusOr<store::Pattern> pattern = (*found)->Get(request->id());
  if (!pattern.ok()) return call.Done(pattern.status());
  ToProto(*pattern, *response);
  return call.Done(absl::OkStatus());
}

grpc::Status EngramService::ListPatterns(grpc::ServerContext* context,
                                         const v1::ListPatternsRequest* request,
                                         v1::ListPatternsResponse* response) {
  Call call(policy_, "ListPatterns", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  uint64_t after = 0;
  if (!request->page_token().empty()) {
    absl::StatusOr<std::string> parsed = tokens_.Open(
        PageTokens::Patterns(request->store()), request->page_token());
    if (!parsed.ok()) return call.Done(parsed.status());
    if (!absl::SimpleAtoi(*parsed, &after)) {
      return call.Done(absl::InternalError("page_token holds no pattern id"));
    }
  }
  // gRPC holds the page until its client has read it: however many clients
  // ask at once, pages are made only while memory is left.
  if (absl::Status s = call.TakeAnswerMemory(
          ListPageBytes(**found, request->page_size(), !request->omit_values(),
                        registry_->limits(), policy_->max_message_bytes),
          "a page of patterns (ask for fewer)");
      !s.ok()) {
    return call.Done(s);
  }
  // A page holds no more patterns than fit in one message, whatever was
  // asked for (a client pages on with the token).
  store::Store::Page page =
      ListPage(**found, after, request->page_size(), !request->omit_values(),
               registry_->limits(), policy_->max_message_bytes);
  for (const store::Pattern& p : page.patterns) {
    ToProto(p, *response->add_patterns());
  }
  if (page.more) {
    response->set_next_page_token(
        tokens_.Issue(PageTokens::Patterns(request->store()),
                      absl::StrCat(page.patterns.back().id)));
  }
  return call.Done(absl::OkStatus());
}

grpc::Status EngramService::DeletePatterns(
    grpc::ServerContext* context, const v1::DeletePatternsRequest* request,
    v1::DeletePatternsResponse* response) {
  Call call(policy_, "DeletePatterns", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request->store());
  if (!found.ok()) return call.Done(found.status());
  absl::Status status = (*found)->Delete(
      absl::MakeConstSpan(request->ids().data(), request->ids_size()));
  if (!status.ok()) return call.Done(status);
  response->set_pattern_count((*found)->view()->size());
  CountStore(*metrics_, **found);
  call.Wrote(*found);
  return call.Done(absl::OkStatus());
}

grpc::ServerUnaryReactor* EngramService::Retrieve(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request,
    grpc::ByteBuffer* raw_response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto call = std::make_shared<Call>(policy_, "Retrieve", "");
  if (!call->Admit(*context, raw_request->Length())) {
    reactor->Finish(call->Refused());
    return reactor;
  }
  // A large request is parsed and converted only where memory allows: two
  // more copies of it.
  if (raw_request->Length() >= WriteBudget::kSmallRequest) {
    if (absl::Status s = call->TakeMemory(2 * raw_request->Length(),
                                          "reading the retrieval's request");
        !s.ok()) {
      reactor->Finish(call->Done(s));
      return reactor;
    }
  }
  // The request and (in Answer) the answer each live on one arena.
  google::protobuf::Arena arena(CallArenaOptions());
  v1::RetrieveRequest& request =
      *google::protobuf::Arena::CreateMessage<v1::RetrieveRequest>(&arena);
  grpc::ByteBuffer bytes(*raw_request);  // Shares its slices.
  const bool parsed =
      grpc::SerializationTraits<v1::RetrieveRequest>::Deserialize(&bytes,
                                                                  &request)
          .ok();
  if (parsed) call->set_store(request.store());
  if (!parsed) {
    reactor->Finish(call->Done(absl::InvalidArgumentError(
        absl::StrCat("the request's ", raw_request->Length(),
                     " bytes are not an engram.v1.RetrieveRequest"))));
    return reactor;
  }
  absl::StatusOr<std::unique_ptr<Retrieval>> retrieval =
      PrepareRetrieval(request);
  if (!retrieval.ok()) {
    reactor->Finish(call->Done(retrieval.status()));
    return reactor;
  }
  const bool omit_vectors = request.omit_vectors();
  if ((*retrieval)->Work() <= static_cast<double>(options_.inline_work)) {
    reactor->Finish(call->Done(
        Answer(**retrieval, context, 1, omit_vectors, raw_response)));
    return reactor;
  }
  // While it waits for a thread it holds its request as received and its
  // queries as converted.
  const size_t request_bytes = raw_request->Length();
  const size_t holds = 2 * request_bytes;
  std::string why;
  const bool handed = handlers_->Run(
      [this, call, retrieval = *std::move(retrieval), context, omit_vectors,
       raw_response, reactor, request_bytes]() mutable {
        absl::Status answered = call->TakeRetrievalMemory(request_bytes);
        if (answered.ok()) {
          answered = Answer(*retrieval, context, options_.retrieval_threads,
                            omit_vectors, raw_response);
        }
        const grpc::Status status = call->Done(answered);
        // The call ends before its answer goes: once the reactor finishes,
        // the server may shut down and free the policy the call's end
        // reports to (regression: freed under a handler thread that was
        // still letting go of its task, ASan, ServiceTest).
        call.reset();
        retrieval.reset();
        reactor->Finish(status);
      },
      holds, &why);
  if (!handed) {
    reactor->Finish(call->Done(RetrievalThreadsBusy(why)));
  }
  return reactor;
}

double EngramService::Retrieval::Work() const {
  const double steps = query.steps.value_or(view->settings().retrieval.steps);
  return static_cast<double>(query.num_queries) * steps *
         static_cast<double>(view->size()) *
         (view->settings().dimension + 64.0);
}

absl::StatusOr<std::unique_ptr<EngramService::Retrieval>>
EngramService::PrepareRetrieval(const v1::RetrieveRequest& request) const {
  absl::StatusOr<std::shared_ptr<store::Store>> found =
      registry_->Get(request.store());
  if (!found.ok()) return found.status();
  auto retrieval = std::make_unique<Retrieval>();
  retrieval->view = (*found)->view();
  const store::StoreView& view = *retrieval->view;
  const size_t d = view.settings().dimension;
  absl::StatusOr<store::RetrieveRequest> converted =
      FromProto(request, d, retrieval->queries);
  if (!converted.ok()) return converted.status();
  retrieval->query = *std::move(converted);

  // Refuse up front an answer that could not be sent: its exact size but
  // for the labels, bounded by the longest label the store ever held.
  const size_t top_k =
      request.has_top_k() ? request.top_k() : view.settings().retrieval.top_k;
  const size_t per_query =
      (request.omit_vectors() ? 0 : 4 * d + 6) + 40 +
      std::min({top_k, view.size(), registry_->limits().max_top_k}) *
          (32 + view.max_label_bytes());
  const size_t answer = 64 + retrieval->query.num_queries * per_query;
  if (answer > policy_->max_message_bytes) {
    return TooLarge(
        absl::StrCat("the answer to ", retrieval->query.num_queries,
                     " queries"),
        answer, policy_->max_message_bytes,
        absl::StrCat(
            "send at most ",
            std::max<size_t>(1, (policy_->max_message_bytes - 64) / per_query),
            " queries per request, or fewer top_k, or set "
            "omit_vectors"));
  }
  return retrieval;
}

absl::Status EngramService::Answer(const Retrieval& retrieval,
                                   const grpc::ServerContextBase* context,
                                   int threads, bool omit_vectors,
                                   grpc::ByteBuffer* raw_response) {
  core::RetrievalOptions options;
  options.check = DeadlineCheck(context);
  options.threads = threads;
  absl::StatusOr<store::RetrieveResult> result = store::Retrieve(
      *retrieval.view, retrieval.query, registry_->limits(), options);
  if (!result.ok()) return result.status();
  google::protobuf::Arena arena(CallArenaOptions());
  v1::RetrieveResponse& response =
      *google::protobuf::Arena::CreateMessage<v1::RetrieveResponse>(&arena);
  ToProto(*result, retrieval.view->settings().dimension, omit_vectors,
          response);
  bool own_buffer;
  if (grpc::Status sent =
          grpc::SerializationTraits<v1::RetrieveResponse>::Serialize(
              response, raw_response, &own_buffer);
      !sent.ok()) {
    return absl::InternalError(absl::StrCat(
        "the answer could not be serialized: ", sent.error_message()));
  }
  metrics_->RecordRetrieval(
      result->path.path == store::PathChoice::kLowRank ? "low_rank" : "exact",
      retrieval.query.num_queries, result->path.error_bound);
  return absl::OkStatus();
}

namespace {

// The status of one kind of job of a store (jobs::JobRunner keeps both).
template <typename Status>
absl::StatusOr<Status> JobStatus(jobs::JobRunner& jobs,
                                 const std::string& store);
template <>
absl::StatusOr<v1::FitStatus> JobStatus(jobs::JobRunner& jobs,
                                        const std::string& store) {
  return jobs.FitStatus(store);
}
template <>
absl::StatusOr<v1::CalibrationStatus> JobStatus(jobs::JobRunner& jobs,
                                                const std::string& store) {
  return jobs.CalibrationStatus(store);
}

template <typename Status>
constexpr jobs::JobKind KindOf() {
  return std::is_same_v<Status, v1::FitStatus> ? jobs::JobKind::kFit
                                               : jobs::JobKind::kCalibration;
}

}  // namespace

template <typename Status>
absl::Status EngramService::Watch(grpc::ServerContext* context,
                                  const std::string& store,
                                  grpc::ServerWriter<Status>* writer) {
  constexpr jobs::JobKind kind = KindOf<Status>();
  absl::StatusOr<uint64_t> seen = jobs_->Generation(kind, store);
  while (seen.ok()) {
    absl::StatusOr<Status> status = JobStatus<Status>(*jobs_, store);
    if (!status.ok()) return status.status();
    if (!writer->Write(*status)) return absl::OkStatus();
    if (status->state() != Status::PENDING &&
        status->state() != Status::RUNNING) {
      return absl::OkStatus();
    }
    // Wake at least once a second to notice a client that went away.
    const uint64_t before = *seen;
    do {
      if (context->IsCancelled()) {
        return absl::CancelledError("the client cancelled the watch");
      }
      seen = jobs_->WaitForChange(kind, store, before, absl::Seconds(1));
    } while (seen.ok() && *seen == before);
  }
  return seen.status();
}

template <typename Status>
absl::Status EngramService::Reply(const std::string& store, absl::Status done,
                                  Status* response) {
  if (!done.ok()) return done;
  absl::StatusOr<Status> status = JobStatus<Status>(*jobs_, store);
  if (!status.ok()) return status.status();
  *response = *std::move(status);
  return absl::OkStatus();
}

grpc::Status EngramService::GetFitStatus(grpc::ServerContext* context,
                                         const v1::GetFitStatusRequest* request,
                                         v1::FitStatus* response) {
  Call call(policy_, "GetFitStatus", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(Reply(request->store(), absl::OkStatus(), response));
}

grpc::Status EngramService::WatchFit(
    grpc::ServerContext* context, const v1::WatchFitRequest* request,
    grpc::ServerWriter<v1::FitStatus>* writer) {
  Call call(policy_, "WatchFit", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(Watch(context, request->store(), writer));
}

grpc::Status EngramService::StartFit(grpc::ServerContext* context,
                                     const v1::StartFitRequest* request,
                                     v1::FitStatus* response) {
  Call call(policy_, "StartFit", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(Reply(request->store(),
                         jobs_->Start(jobs::JobKind::kFit, request->store()),
                         response));
}

grpc::Status EngramService::CancelFit(grpc::ServerContext* context,
                                      const v1::CancelFitRequest* request,
                                      v1::FitStatus* response) {
  Call call(policy_, "CancelFit", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(Reply(request->store(),
                         jobs_->Cancel(jobs::JobKind::kFit, request->store()),
                         response));
}

grpc::Status EngramService::StartCalibration(
    grpc::ServerContext* context, const v1::StartCalibrationRequest* request,
    v1::CalibrationStatus* response) {
  Call call(policy_, "StartCalibration", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  std::optional<bool> apply;
  if (request->has_apply()) apply = request->apply();
  return call.Done(
      Reply(request->store(),
            jobs_->Start(jobs::JobKind::kCalibration, request->store(), apply),
            response));
}

grpc::Status EngramService::GetCalibrationStatus(
    grpc::ServerContext* context,
    const v1::GetCalibrationStatusRequest* request,
    v1::CalibrationStatus* response) {
  Call call(policy_, "GetCalibrationStatus", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(Reply(request->store(), absl::OkStatus(), response));
}

grpc::Status EngramService::WatchCalibration(
    grpc::ServerContext* context, const v1::WatchCalibrationRequest* request,
    grpc::ServerWriter<v1::CalibrationStatus>* writer) {
  Call call(policy_, "WatchCalibration", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(Watch(context, request->store(), writer));
}

grpc::Status EngramService::CancelCalibration(
    grpc::ServerContext* context, const v1::CancelCalibrationRequest* request,
    v1::CalibrationStatus* response) {
  Call call(policy_, "CancelCalibration", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  return call.Done(Reply(
      request->store(),
      jobs_->Cancel(jobs::JobKind::kCalibration, request->store()), response));
}

grpc::Status EngramService::CreateBackup(
    grpc::ServerContext* context, const v1::CreateBackupRequest* request,
    grpc::ServerWriter<v1::BackupChunk>* writer) {
  Call call(policy_, "CreateBackup", request->store());
  if (!call.Admit(*context, request)) return call.Refused();
  std::vector<std::shared_ptr<store::Store>> stores;
  if (!request->store().empty()) {
    absl::StatusOr<std::shared_ptr<store::Store>> found =
        registry_->Get(request->store());
    if (!found.ok()) return call.Done(found.status());
    stores.push_back(*std::move(found));
  } else {
    bool more = false;
    absl::StatusOr<std::vector<std::shared_ptr<store::Store>>> all =
        registry_->List("", registry_->limits().max_stores, more);
    if (!all.ok()) return call.Done(all.status());
    stores = *std::move(all);
    for (const store::StoreRegistry::DamagedStore& damaged :
         registry_->Damaged()) {
      Log(LogLevel::kWarning, "backup: store '%s' is DAMAGED and left out",
          damaged.name);
    }
  }
  ChunkWriter sink(context, writer);
  absl::StatusOr<store::BackupManifest> written = store::WriteBackup(
      stores, sink, ENGRAM_VERSION, BackupPieceBytes(*policy_));
  if (written.ok()) {
    uint64_t patterns = 0;
    for (const store::BackupStore& s : written->stores()) {
      patterns += s.patterns();
    }
    Log(LogLevel::kInfo, "backup of %d stores, %d patterns sent",
        written->stores_size(), patterns);
  }
  return call.Done(written.status());
}

grpc::Status EngramService::RestoreStore(
    grpc::ServerContext* context,
    grpc::ServerReader<v1::RestoreStoreRequest>* reader, v1::Store* response) {
  Call call(policy_, "RestoreStore", "");
  if (!call.Admit(*context, nullptr)) return call.Refused();
  absl::StatusOr<RestoreRequest> restore = ReceiveRestore(
      reader, policy_->max_message_bytes, options_.max_restore_bytes, call);
  if (!restore.ok()) return call.Done(restore.status());
  absl::StatusOr<std::shared_ptr<store::Store>> restored =
      registry_->Restore(restore->image, restore->replace);
  if (!restored.ok()) return call.Done(restored.status());
  Log(LogLevel::kInfo,
      "restored store '%s' (%d patterns) from store '%s' of "
      "a backup of %s",
      restore->image.settings.name, restore->image.patterns.size(),
      restore->source, restore->backup_time);
  CountStore(*metrics_, **restored);
  StoreToProto(**restored, *response);
  return call.Done(absl::OkStatus());
}

}  // namespace engram::rpc
