// engram: the command-line client of engramd.
//
//   engram [--addr=HOST:PORT] COMMAND [ARGS] [FLAGS]
//   engram COMMAND --help
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cli/bench.h"
#include "client/client.h"
#include "client/matrix_io.h"
#include "google/protobuf/util/json_util.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "engramd address HOST:PORT.");
ABSL_FLAG(double, timeout_s, 300, "Deadline of each RPC, in seconds.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA of the server's certificate: connect over TLS.");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mutual TLS).");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls_cert.");
ABSL_FLAG(std::string, tls_server_name, "",
          "Server name to verify when it differs from --addr's host.");
ABSL_FLAG(std::string, token_file, "",
          "File holding the bearer token (else $ENGRAM_TOKEN, if set).");
ABSL_FLAG(bool, json, false, "Print JSON instead of text.");
ABSL_FLAG(uint32_t, dim, 0, "store create: the dimension of the store.");
ABSL_FLAG(std::string, similarity, "dot",
          "store create: dot, l2, manhattan or cosine.");
ABSL_FLAG(std::string, separation, "softmax",
          "store create: softmax, sparsemax or entmax15.");
ABSL_FLAG(std::optional<std::string>, beta, std::nullopt,
          "Inverse temperature beta > 0 (store create: default 1, or 'auto' "
          "to calibrate it in the background and apply what it finds; "
          "retrieve: override).");
ABSL_FLAG(std::string, corruption, "dropout",
          "store create: how calibration corrupts patterns: dropout, "
          "gaussian or mask.");
ABSL_FLAG(float, level, 0.5f,
          "store create: calibration's dropout probability, mask fraction "
          "or Gaussian sigma.");
ABSL_FLAG(bool, search_similarity, false,
          "store create: calibration may change the similarity too.");
ABSL_FLAG(bool, search_separation, false,
          "store create: calibration may change the separation too.");
ABSL_FLAG(uint32_t, sample_size, 256,
          "store create: patterns calibration corrupts and retrieves.");
ABSL_FLAG(uint64_t, calibration_seed, 0, "store create: calibration's seed.");
ABSL_FLAG(bool, apply, false,
          "calibrate: --apply applies the setting found, --apply=false (or "
          "--noapply) only reports it; not given: the store's setting. store "
          "create: the store's setting for calibrations on request.");
ABSL_FLAG(std::optional<uint32_t>, steps, std::nullopt,
          "Update steps (store create: default 1; retrieve: override).");
ABSL_FLAG(std::optional<float>, eps, std::nullopt,
          "Stop once an update moves the state by at most eps.");
ABSL_FLAG(std::optional<uint32_t>, top_k, std::nullopt,
          "Best matches reported per query (store create: default 5).");
ABSL_FLAG(std::string, path, "auto", "retrieve: auto, exact or low_rank.");
ABSL_FLAG(std::optional<double>, tolerance, std::nullopt,
          "retrieve: error tolerance of the low-rank path.");
ABSL_FLAG(uint64_t, offset, 0, "add/retrieve: first row of FILE to use.");
ABSL_FLAG(uint64_t, limit, 0, "add/retrieve: rows of FILE to use (0: all).");
ABSL_FLAG(uint64_t, batch, 1024,
          "add: patterns per streamed message; retrieve: queries per RPC.");
ABSL_FLAG(std::string, labels, "",
          "add: a file with one label per row of FILE (idx1, npy or csv).");
ABSL_FLAG(std::string, feature_map, "none",
          "store create: none, or uhop for a U-Hop Stage I feature map.");
ABSL_FLAG(uint32_t, feature_dim, 0,
          "store create: d_Phi of the feature map (0: the store's dimension).");
ABSL_FLAG(std::string, fit_loss, "max",
          "store create: U-Hop loss, max or mean.");
ABSL_FLAG(std::string, fit_optimizer, "sgd", "store create: sgd or adam.");
ABSL_FLAG(uint32_t, fit_epochs, 100, "store create: epochs per fit.");
ABSL_FLAG(double, fit_learning_rate, 0,
          "store create: fit learning rate (0: the reference's).");
ABSL_FLAG(uint32_t, fit_batch_size, 1024,
          "store create: patterns per fit minibatch.");
ABSL_FLAG(uint32_t, fit_debounce_ms, 2000,
          "store create: quiet time after adds before an automatic fit.");
ABSL_FLAG(uint32_t, fit_min_new_patterns, 1,
          "store create: new patterns that make an automatic fit due.");
ABSL_FLAG(uint64_t, fit_seed, 0, "store create: seed of the fit.");
ABSL_FLAG(bool, wait, false, "fit: wait for the fit to end, showing progress.");
ABSL_FLAG(bool, cancel, false, "fit: cancel the store's fit instead.");
ABSL_FLAG(int, concurrency, 1, "bench: concurrent callers.");
ABSL_FLAG(double, duration_s, 10,
          "bench: measured seconds (after the warm-up).");
ABSL_FLAG(uint64_t, requests, 0,
          "bench: stop after this many requests instead.");
ABSL_FLAG(uint64_t, queries_per_request, 1, "bench: queries in each Retrieve.");
ABSL_FLAG(
    double, rate, 0,
    "bench: requests per second over all callers (0: as fast as possible).");
ABSL_FLAG(double, warmup_s, 1, "bench: seconds of calls not counted.");
ABSL_FLAG(
    std::string, queries, "",
    "bench: a file of query rows; default: 256 stored patterns plus noise.");
ABSL_FLAG(bool, omit_vectors, false,
          "bench: do not ask for the retrieved vectors.");
ABSL_FLAG(std::string, out, "",
          "retrieve: write the retrieved vectors to this .npy file.");

namespace engram::client {
namespace {

struct Command {
  const char* name;
  const char* usage;
  const char* help;
};

const Command kCommands[] = {
    {"store create",
     "engram store create NAME --dim=D [--similarity=dot] "
     "[--separation=softmax] [--beta=1|auto] [--steps=1] [--eps=0] "
     "[--top_k=5] [--corruption=dropout] [--level=0.5] "
     "[--search_similarity] [--search_separation] [--sample_size=256]",
     "Creates a store of D-dimensional patterns with its retrieval settings. "
     "--beta=auto calibrates in the background once patterns arrive (and "
     "after each fit) and applies the best setting found."},
    {"store list", "engram store list [--json]", "Lists the stores."},
    {"store get", "engram store get NAME [--json]",
     "Shows a store's settings and statistics."},
    {"store delete", "engram store delete NAME",
     "Deletes a store and all its patterns."},
    {"add",
     "engram add NAME FILE [--offset=N] [--limit=N] [--labels=FILE] "
     "[--batch=1024]",
     "Adds the rows of FILE as patterns. FILE is a 2-D .npy (float32 or "
     "float64), a .csv, or an idx-ubyte file (pixels scaled to [0,1]), "
     "gzipped or not."},
    {"retrieve",
     "engram retrieve NAME FILE [--out=OUT.npy] [--top_k=K] "
     "[--json] [--beta=B] [--steps=S] [--eps=E] "
     "[--path=auto|exact|low_rank] [--tolerance=T] [--offset=N] "
     "[--limit=N] [--batch=1024]",
     "Recalls stored patterns from the rows of FILE used as queries."},
    {"calibrate", "engram calibrate NAME [--wait] [--apply[=false]] [--json]",
     "Queues a self-retrieval calibration of the store now: corrupts a "
     "sample of its patterns, searches beta (and, if the store allows, the "
     "similarity and separation) and applies or reports the best; --wait "
     "waits for it and prints the report."},
    {"fit", "engram fit NAME [--wait] [--cancel] [--json]",
     "Starts a Stage I fit of a U-Hop store now (or shows the running one); "
     "--wait follows its progress to the end; --cancel cancels it."},
    {"bench",
     "engram bench NAME [--concurrency=1] [--duration_s=10 | "
     "--requests=N] [--queries_per_request=1] [--rate=R] "
     "[--warmup_s=1] [--queries=FILE] [--omit_vectors] [--json]",
     "Load-tests Retrieve on a store: prints requests/s, queries/s and "
     "latency p50/p90/p99/max."},
    {"version", "engram version", "Prints the client's version and API."},
    {"health", "engram health [SERVICE]",
     "Checks the server's health (liveness), or a service's (readiness: "
     "engram.v1.Engram)."},
};

[[noreturn]] void Fail(const std::string& message) {
  std::cerr << "engram: " << message << "\n";
  std::exit(1);
}

void FailOn(const absl::Status& status, const std::string& context = "") {
  if (status.ok()) return;
  Fail(absl::StrCat(context.empty() ? "" : context + ": ",
                    absl::StatusCodeToString(status.code()), ": ",
                    status.message()));
}

std::string Usage() {
  std::string text =
      "engram: the command-line client of engramd.\n\nUsage: engram "
      "[--addr=HOST:PORT] COMMAND ...\n\nCommands:\n";
  for (const Command& c : kCommands) {
    absl::StrAppend(&text, "  ", c.usage, "\n      ", c.help, "\n");
  }
  absl::StrAppend(&text, "\n'engram COMMAND --help' shows one command.\n");
  return text;
}

const Command* FindCommand(const std::vector<std::string>& words) {
  for (const Command& c : kCommands) {
    const std::string name = c.name;
    const std::string first = words.empty() ? "" : words[0];
    const std::string two = words.size() > 1 ? first + " " + words[1] : first;
    if (name == first || name == two) return &c;
  }
  return nullptr;
}

std::unique_ptr<Client> Connect() {
  ClientOptions options;
  options.address = absl::GetFlag(FLAGS_addr);
  options.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  auto read = [](const std::string& path, const char* flag) {
    std::ifstream in(path, std::ios::binary);
    if (!in) Fail(absl::StrCat("--", flag, ": cannot read '", path, "'"));
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
  };
  if (!absl::GetFlag(FLAGS_tls_ca).empty()) {
    options.tls_ca = read(absl::GetFlag(FLAGS_tls_ca), "tls_ca");
  }
  if (!absl::GetFlag(FLAGS_tls_cert).empty()) {
    options.tls_cert = read(absl::GetFlag(FLAGS_tls_cert), "tls_cert");
    options.tls_key = read(absl::GetFlag(FLAGS_tls_key), "tls_key");
  }
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  if (!absl::GetFlag(FLAGS_token_file).empty()) {
    options.token = std::string(absl::StripAsciiWhitespace(
        read(absl::GetFlag(FLAGS_token_file), "token_file")));
  } else if (const char* token = std::getenv("ENGRAM_TOKEN")) {
    options.token = token;
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  FailOn(client.status());
  return std::move(*client);
}

std::string Json(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options)
           .ok()) {
    Fail("cannot print the response as JSON");
  }
  return out;
}

template <typename Enum>
Enum ParseEnum(const std::string& flag, const std::string& value,
               const std::map<std::string, Enum>& names) {
  auto found = names.find(absl::AsciiStrToLower(value));
  if (found == names.end()) {
    std::vector<std::string> choices;
    for (const auto& [name, unused] : names) choices.push_back(name);
    Fail(absl::StrCat("--", flag, "=", value, " is not one of ",
                      absl::StrJoin(choices, ", ")));
  }
  return found->second;
}

std::string Lower(const std::string& name) {
  return absl::AsciiStrToLower(name);
}

// The capacity report, one figure per line.
std::string ReportText(const v1::CalibrationReport& r) {
  std::string text = absl::StrFormat(
      "calibrated:    %s %s beta %.4g (%s; was error %.4g, recall@1 %.3f)\n",
      Lower(v1::Similarity_Name(r.similarity())),
      Lower(v1::Separation_Name(r.separation())), r.beta(),
      r.applied()    ? "applied"
      : r.improved() ? "found, not applied"
                     : "kept the current setting",
      r.previous_error(), r.previous_recall_at_1());
  absl::StrAppendFormat(
      &text,
      "capacity:      recall@1 %.3f, error %.4g, well separated %.1f%%, "
      "theory's beta %.4g (p90 %.4g)\n",
      r.recall_at_1(), r.error(), 100 * r.well_separated_fraction(),
      r.theory_beta_median(), r.theory_beta_p90());
  absl::StrAppendFormat(
      &text,
      "               on %u of %u patterns (%s %g), %u memories, %u "
      "settings in %.2fs\n",
      r.sample_size(), r.pattern_count(),
      Lower(v1::Corruption_Name(r.corruption())), r.level(), r.memories_used(),
      r.candidates(), r.duration_seconds());
  if (!r.detail().empty()) {
    absl::StrAppendFormat(&text, "               %s\n", r.detail());
  }
  return text;
}

void PrintStoreText(const v1::Store& s) {
  const v1::RetrievalSettings& r = s.retrieval();
  absl::PrintF("name:          %s\n", s.name());
  absl::PrintF("dimension:     %u\n", s.dimension());
  absl::PrintF("patterns:      %u\n", s.pattern_count());
  absl::PrintF("similarity:    %s\n",
               Lower(v1::Similarity_Name(r.similarity())));
  absl::PrintF("separation:    %s\n",
               Lower(v1::Separation_Name(r.separation())));
  absl::PrintF("beta:          %g\n", r.beta());
  absl::PrintF("steps:         %u\n", r.steps());
  absl::PrintF("eps:           %g\n", r.eps());
  absl::PrintF("top_k:         %u\n", r.top_k());
  absl::PrintF("feature map:   %s\n",
               Lower(v1::FeatureMapKind_Name(s.feature_map().kind())));
  absl::PrintF("fit:           %s",
               Lower(v1::FitStatus::State_Name(s.fit().state())));
  if (s.fit().map_version() > 0 || s.fit().state() == v1::FitStatus::RUNNING) {
    absl::PrintF(
        " (map v%u from %u patterns; epoch %u/%u; loss %.4f -> %.4f; %.2fs)",
        s.fit().map_version(), s.fit().patterns_fitted(), s.fit().epoch(),
        s.fit().total_epochs(), s.fit().loss_before(), s.fit().loss_after(),
        s.fit().duration_seconds());
  }
  absl::PrintF("\n");
  if (s.feature_map().kind() == v1::UHOP) {
    absl::PrintF("feature norms: max %.4g, mean %.4g (d_Phi %u)\n",
                 s.norms().max_feature_norm(), s.norms().mean_feature_norm(),
                 s.feature_map().feature_dim());
  }
  absl::PrintF("norms:         max %.4g, mean %.4g, max |entry| %.4g\n",
               s.norms().max_norm(), s.norms().mean_norm(),
               s.norms().max_abs_entry());
  absl::PrintF("low-rank:      tolerance %g, max degree %u; ",
               s.low_rank().tolerance(), s.low_rank().max_degree());
  if (s.low_rank_state().degree() > 0) {
    absl::PrintF("sums kept to degree %u (rank %u)\n",
                 s.low_rank_state().degree(), s.low_rank_state().rank());
  } else {
    absl::PrintF("no sums: %s\n", s.low_rank_state().detail());
  }
  const v1::CalibrationSettings& c = s.calibration();
  absl::PrintF(
      "calibration:   %s, %s; %s %g; search beta%s%s; sample %u, "
      "seed %u\n",
      c.automatic() ? "automatic" : "on request",
      c.apply() ? "applies" : "reports only",
      Lower(v1::Corruption_Name(c.corruption())), c.level(),
      c.search_similarity() ? ", similarity" : "",
      c.search_separation() ? ", separation" : "", c.sample_size(), c.seed());
  if (s.has_calibration_report()) {
    absl::PrintF("%s", ReportText(s.calibration_report()));
  }
  absl::PrintF("state:         %s\n", Lower(v1::Store::State_Name(s.state())));
  absl::PrintF("version:       %u\n", s.version());
}

// Whether --apply (or --noapply) was on the command line; set by Main.
bool apply_given = false;

// --apply if given on the command line.
std::optional<bool> ApplyFlag() {
  if (!apply_given) return std::nullopt;
  return absl::GetFlag(FLAGS_apply);
}

// --beta as a number (absent: not given); 'auto' is store create's alone.
std::optional<float> BetaFlag() {
  const std::optional<std::string> text = absl::GetFlag(FLAGS_beta);
  if (!text) return std::nullopt;
  float beta = 0;
  if (!absl::SimpleAtof(*text, &beta) || !(beta > 0) || !std::isfinite(beta)) {
    Fail(absl::StrCat("--beta must be a number > 0",
                      " (or 'auto' for store create), got '", *text, "'"));
  }
  return beta;
}

void StoreCreate(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("store create takes one NAME; see --help");
  if (absl::GetFlag(FLAGS_dim) == 0) Fail("store create needs --dim=D (> 0)");
  v1::Store store;
  store.set_name(args[0]);
  store.set_dimension(absl::GetFlag(FLAGS_dim));
  v1::RetrievalSettings* r = store.mutable_retrieval();
  r->set_similarity(ParseEnum<v1::Similarity>("similarity",
                                              absl::GetFlag(FLAGS_similarity),
                                              {{"dot", v1::DOT},
                                               {"l2", v1::L2},
                                               {"manhattan", v1::MANHATTAN},
                                               {"cosine", v1::COSINE},
                                               {"kernel_dot", v1::KERNEL_DOT},
                                               {"kernel_l2", v1::KERNEL_L2}}));
  r->set_separation(ParseEnum<v1::Separation>("separation",
                                              absl::GetFlag(FLAGS_separation),
                                              {{"softmax", v1::SOFTMAX},
                                               {"sparsemax", v1::SPARSEMAX},
                                               {"entmax15", v1::ENTMAX15}}));
  v1::CalibrationSettings* c = store.mutable_calibration();
  if (absl::GetFlag(FLAGS_beta) == "auto") {
    c->set_automatic(true);
    c->set_apply(true);
  } else if (std::optional<float> beta = BetaFlag()) {
    r->set_beta(*beta);
  }
  if (std::optional<bool> apply = ApplyFlag()) {
    c->set_apply(*apply);
  }
  c->set_corruption(ParseEnum<v1::Corruption>("corruption",
                                              absl::GetFlag(FLAGS_corruption),
                                              {{"dropout", v1::DROPOUT},
                                               {"gaussian", v1::GAUSSIAN},
                                               {"mask", v1::MASK}}));
  c->set_level(absl::GetFlag(FLAGS_level));
  c->set_search_similarity(absl::GetFlag(FLAGS_search_similarity));
  c->set_search_separation(absl::GetFlag(FLAGS_search_separation));
  c->set_sample_size(absl::GetFlag(FLAGS_sample_size));
  c->set_seed(absl::GetFlag(FLAGS_calibration_seed));
  if (auto steps = absl::GetFlag(FLAGS_steps)) r->set_steps(*steps);
  if (auto eps = absl::GetFlag(FLAGS_eps)) r->set_eps(*eps);
  if (auto top_k = absl::GetFlag(FLAGS_top_k)) r->set_top_k(*top_k);
  v1::FeatureMapSettings* f = store.mutable_feature_map();
  f->set_kind(ParseEnum<v1::FeatureMapKind>(
      "feature_map", absl::GetFlag(FLAGS_feature_map),
      {{"none", v1::NONE}, {"uhop", v1::UHOP}}));
  f->set_feature_dim(absl::GetFlag(FLAGS_feature_dim));
  f->set_loss(ParseEnum<v1::FitLoss>("fit_loss", absl::GetFlag(FLAGS_fit_loss),
                                     {{"max", v1::MAX}, {"mean", v1::MEAN}}));
  f->set_optimizer(ParseEnum<v1::FitOptimizer>(
      "fit_optimizer", absl::GetFlag(FLAGS_fit_optimizer),
      {{"sgd", v1::SGD}, {"adam", v1::ADAM}}));
  f->set_epochs(absl::GetFlag(FLAGS_fit_epochs));
  f->set_learning_rate(absl::GetFlag(FLAGS_fit_learning_rate));
  f->set_batch_size(absl::GetFlag(FLAGS_fit_batch_size));
  f->set_debounce_ms(absl::GetFlag(FLAGS_fit_debounce_ms));
  f->set_min_new_patterns(absl::GetFlag(FLAGS_fit_min_new_patterns));
  f->set_seed(absl::GetFlag(FLAGS_fit_seed));
  absl::StatusOr<v1::Store> created = Connect()->CreateStore(store);
  FailOn(created.status(), "store create");
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json(*created);
  } else {
    absl::PrintF("created store %s (dimension %u)\n", created->name(),
                 created->dimension());
  }
}

void StoreList(const std::vector<std::string>& args) {
  if (!args.empty()) Fail("store list takes no arguments");
  absl::StatusOr<std::vector<v1::Store>> stores = Connect()->ListStores();
  FailOn(stores.status(), "store list");
  if (absl::GetFlag(FLAGS_json)) {
    v1::ListStoresResponse all;
    for (const v1::Store& s : *stores) *all.add_stores() = s;
    std::cout << Json(all);
    return;
  }
  size_t width = 4;
  for (const v1::Store& s : *stores) width = std::max(width, s.name().size());
  absl::PrintF("%-*s %9s %10s %-10s %-10s %8s %6s\n", width, "NAME",
               "DIMENSION", "PATTERNS", "SIMILARITY", "SEPARATION", "BETA",
               "STEPS");
  for (const v1::Store& s : *stores) {
    absl::PrintF("%-*s %9u %10u %-10s %-10s %8g %6u\n", width, s.name(),
                 s.dimension(), s.pattern_count(),
                 Lower(v1::Similarity_Name(s.retrieval().similarity())),
                 Lower(v1::Separation_Name(s.retrieval().separation())),
                 s.retrieval().beta(), s.retrieval().steps());
  }
}

void StoreGet(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("store get takes one NAME");
  absl::StatusOr<v1::Store> store = Connect()->GetStore(args[0]);
  FailOn(store.status(), "store get");
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json(*store);
  } else {
    PrintStoreText(*store);
  }
}

void StoreDelete(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("store delete takes one NAME");
  FailOn(Connect()->DeleteStore(args[0]), "store delete");
  if (absl::GetFlag(FLAGS_json)) {
    absl::PrintF("{\"deleted\": \"%s\"}\n", args[0]);
  } else {
    absl::PrintF("deleted store %s\n", args[0]);
  }
}

Matrix Load(const std::string& path) {
  absl::StatusOr<Matrix> m =
      ReadMatrix(path, absl::GetFlag(FLAGS_offset), absl::GetFlag(FLAGS_limit));
  FailOn(m.status());
  if (m->rows == 0) Fail(absl::StrCat(path, ": no rows to use"));
  return std::move(*m);
}

// "[#########.........]  4500/10000 patterns  45%"
std::string ProgressBar(size_t done, size_t total, const char* what) {
  constexpr int kWidth = 30;
  const int filled = total ? static_cast<int>(kWidth * done / total) : kWidth;
  return absl::StrFormat("[%s%s] %zu/%zu %s %3d%%", std::string(filled, '#'),
                         std::string(kWidth - filled, '.'), done, total, what,
                         total ? static_cast<int>(100 * done / total) : 100);
}

std::string LabelText(float v) {
  return v == std::floor(v) ? absl::StrCat(static_cast<int64_t>(v))
                            : absl::StrCat(v);
}

void Add(const std::vector<std::string>& args) {
  if (args.size() != 2) Fail("add takes NAME FILE");
  const Matrix m = Load(args[1]);
  std::vector<std::string> labels;
  if (!absl::GetFlag(FLAGS_labels).empty()) {
    const Matrix l = Load(absl::GetFlag(FLAGS_labels));
    if (l.rows != m.rows || l.cols != 1) {
      Fail(absl::StrCat(absl::GetFlag(FLAGS_labels), " has ", l.rows, "x",
                        l.cols, " values; expected ", m.rows,
                        "x1, one label per row of ", args[1]));
    }
    for (float v : l.data) labels.push_back(LabelText(v));
  }
  std::unique_ptr<Client> client = Connect();
  absl::StatusOr<v1::Store> store = client->GetStore(args[0]);
  FailOn(store.status(), "add");
  if (store->dimension() != m.cols) {
    Fail(absl::StrCat(args[1], " has rows of ", m.cols, " values; store '",
                      args[0], "' has dimension ", store->dimension()));
  }
  const bool tty = isatty(STDERR_FILENO);
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::ImportPatternsResponse> done = client->Import(
      args[0], m.data, m.cols, labels, absl::GetFlag(FLAGS_batch),
      [&](size_t sent) {
        if (tty)
          absl::FPrintF(stderr, "\r%s", ProgressBar(sent, m.rows, "patterns"));
      });
  if (tty) absl::FPrintF(stderr, "\n");
  FailOn(done.status(), "add");
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json(*done);
  } else {
    absl::PrintF("added %u patterns (ids %u..%u) to %s in %.2fs; it holds %u\n",
                 done->patterns_added(), done->first_id(), done->last_id(),
                 args[0], seconds, done->pattern_count());
  }
}

void Retrieve(const std::vector<std::string>& args) {
  if (args.size() != 2) Fail("retrieve takes NAME FILE");
  const Matrix q = Load(args[1]);
  v1::RetrieveRequest request;
  if (auto steps = absl::GetFlag(FLAGS_steps)) request.set_steps(*steps);
  if (std::optional<float> beta = BetaFlag()) request.set_beta(*beta);
  if (auto top_k = absl::GetFlag(FLAGS_top_k)) request.set_top_k(*top_k);
  if (auto eps = absl::GetFlag(FLAGS_eps)) request.set_eps(*eps);
  if (auto tolerance = absl::GetFlag(FLAGS_tolerance)) {
    request.set_tolerance(*tolerance);
  }
  request.set_path(ParseEnum<v1::RetrievalPath>(
      "path", absl::GetFlag(FLAGS_path),
      {{"auto", v1::AUTO}, {"exact", v1::EXACT}, {"low_rank", v1::LOW_RANK}}));
  const std::string out_path = absl::GetFlag(FLAGS_out);
  request.set_omit_vectors(out_path.empty());

  std::unique_ptr<Client> client = Connect();
  absl::StatusOr<v1::Store> store = client->GetStore(args[0]);
  FailOn(store.status(), "retrieve");
  if (store->dimension() != q.cols) {
    Fail(absl::StrCat(args[1], " has rows of ", q.cols, " values; store '",
                      args[0], "' has dimension ", store->dimension()));
  }
  const size_t batch = std::max<uint64_t>(1, absl::GetFlag(FLAGS_batch));
  v1::RetrieveResponse all;
  Matrix retrieved{q.rows, q.cols, {}};
  for (size_t first = 0; first < q.rows; first += batch) {
    const size_t count = std::min(batch, q.rows - first);
    absl::StatusOr<v1::RetrieveResponse> r = client->Retrieve(
        args[0],
        absl::MakeConstSpan(q.data).subspan(first * q.cols, count * q.cols),
        q.cols, request);
    FailOn(r.status(), absl::StrCat("retrieve (rows ", first, "..",
                                    first + count - 1, ")"));
    for (v1::QueryResult& result : *r->mutable_results()) {
      retrieved.data.insert(retrieved.data.end(), result.values().begin(),
                            result.values().end());
      result.clear_values();
    }
    all.MergeFrom(*r);
  }
  if (!out_path.empty()) FailOn(WriteNpy(out_path, retrieved), "--out");
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json(all);
    return;
  }
  const v1::PathReport& path = all.path();
  absl::PrintF("path %s (%s)\n", Lower(v1::RetrievalPath_Name(path.path())),
               path.reason());
  for (int i = 0; i < all.results_size(); ++i) {
    const v1::QueryResult& r = all.results(i);
    std::vector<std::string> matches;
    for (const v1::Match& m : r.matches()) {
      matches.push_back(absl::StrFormat(
          "%u%s:%.3f", m.id(), m.label().empty() ? "" : "[" + m.label() + "]",
          m.weight()));
    }
    absl::PrintF("query %d: energy %.4g, steps %u%s; top %s\n",
                 absl::GetFlag(FLAGS_offset) + i, r.energy(), r.steps(),
                 r.converged() ? " (converged)" : "",
                 absl::StrJoin(matches, " "));
  }
  if (!out_path.empty()) {
    absl::PrintF("wrote %zu x %zu retrieved vectors to %s\n", retrieved.rows,
                 retrieved.cols, out_path);
  }
}

std::string FitLine(const v1::FitStatus& s) {
  const std::string state = Lower(v1::FitStatus::State_Name(s.state()));
  const int width = 30;
  const int filled =
      s.total_epochs() ? static_cast<int>(width * s.epoch() / s.total_epochs())
                       : 0;
  std::string bar(filled, '#');
  bar.append(width - filled, '.');
  return absl::StrFormat("%-10s [%s] epoch %u/%u  loss %.4f -> %.4f  %.1fs",
                         state, bar, s.epoch(), s.total_epochs(),
                         s.loss_before(), s.loss_after(), s.duration_seconds());
}

void Fit(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("fit takes one NAME");
  std::unique_ptr<Client> client = Connect();
  absl::StatusOr<v1::FitStatus> status = absl::GetFlag(FLAGS_cancel)
                                             ? client->CancelFit(args[0])
                                             : client->GetFitStatus(args[0]);
  FailOn(status.status(), "fit");
  if (!absl::GetFlag(FLAGS_cancel) &&
      status->state() != v1::FitStatus::RUNNING &&
      status->state() != v1::FitStatus::PENDING) {
    status = client->StartFit(args[0]);
    FailOn(status.status(), "fit");
  }
  if (absl::GetFlag(FLAGS_wait)) {
    const bool tty = isatty(STDERR_FILENO);
    status = client->WatchFit(args[0], [&](const v1::FitStatus& s) {
      if (tty) absl::FPrintF(stderr, "\r%s", FitLine(s));
    });
    if (tty) absl::FPrintF(stderr, "\n");
    FailOn(status.status(), "fit");
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json(*status);
  } else {
    absl::PrintF("%s: %s", args[0], FitLine(*status));
    if (status->map_version() > 0) {
      absl::PrintF("  map v%u (%u patterns)", status->map_version(),
                   status->patterns_fitted());
    }
    if (!status->error().empty()) absl::PrintF("  error: %s", status->error());
    absl::PrintF("\n");
  }
  if (absl::GetFlag(FLAGS_wait) &&
      status->state() != v1::FitStatus::SUCCEEDED) {
    std::exit(1);
  }
}

void Calibrate(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("calibrate takes one NAME");
  std::unique_ptr<Client> client = Connect();
  absl::StatusOr<v1::CalibrationStatus> status =
      client->StartCalibration(args[0], ApplyFlag());
  FailOn(status.status(), "calibrate");
  const auto busy = [](const v1::CalibrationStatus& s) {
    return s.state() == v1::CalibrationStatus::PENDING ||
           s.state() == v1::CalibrationStatus::RUNNING;
  };
  if (absl::GetFlag(FLAGS_wait)) {
    const bool tty = isatty(STDERR_FILENO);
    const absl::Time start = absl::Now();
    while (busy(*status)) {
      if (tty) {
        absl::FPrintF(stderr, "\r%s %.1fs",
                      Lower(v1::CalibrationStatus::State_Name(status->state())),
                      absl::ToDoubleSeconds(absl::Now() - start));
      }
      absl::SleepFor(absl::Milliseconds(100));
      status = client->GetCalibrationStatus(args[0]);
      FailOn(status.status(), "calibrate");
    }
    if (tty) absl::FPrintF(stderr, "\n");
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json(*status);
  } else {
    absl::PrintF("%s: calibration %s\n", args[0],
                 Lower(v1::CalibrationStatus::State_Name(status->state())));
    if (!status->error().empty()) absl::PrintF("error: %s\n", status->error());
    if (!busy(*status) && status->has_report()) {
      absl::PrintF("%s", ReportText(status->report()));
    }
  }
  if (absl::GetFlag(FLAGS_wait) &&
      status->state() != v1::CalibrationStatus::SUCCEEDED) {
    std::exit(1);
  }
}

void Version(const std::vector<std::string>& args) {
  if (!args.empty()) Fail("version takes no arguments");
  if (absl::GetFlag(FLAGS_json)) {
    absl::PrintF("{\"version\": \"%s\", \"api\": \"engram.v1\"}\n",
                 ENGRAM_VERSION);
  } else {
    absl::PrintF("engram %s (API engram.v1)\n", ENGRAM_VERSION);
  }
}

void Bench(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("bench takes one NAME");
  std::unique_ptr<Client> client = Connect();
  absl::StatusOr<v1::Store> store = client->GetStore(args[0]);
  FailOn(store.status(), "bench");
  BenchOptions o;
  o.store = args[0];
  o.dim = store->dimension();
  if (!absl::GetFlag(FLAGS_queries).empty()) {
    const Matrix q = Load(absl::GetFlag(FLAGS_queries));
    if (q.cols != o.dim) {
      Fail(absl::StrCat(absl::GetFlag(FLAGS_queries), " has rows of ", q.cols,
                        " values; store '", args[0], "' has dimension ",
                        o.dim));
    }
    o.queries = q.data;
  } else {
    grpc::ClientContext context;
    v1::ListPatternsRequest request;
    request.set_store(args[0]);
    request.set_page_size(256);
    v1::ListPatternsResponse page;
    FailOn(absl::Status(static_cast<absl::StatusCode>(
                            client->stub()
                                .ListPatterns(&context, request, &page)
                                .error_code()),
                        "cannot list patterns"),
           "bench");
    if (page.patterns_size() == 0)
      Fail(absl::StrCat("store '", args[0], "' is empty"));
    std::mt19937 rng(1);
    std::normal_distribution<float> noise(0.0f, 0.05f);
    for (const v1::Pattern& p : page.patterns()) {
      for (float v : p.values()) o.queries.push_back(v + noise(rng));
    }
  }
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.duration_s = absl::GetFlag(FLAGS_duration_s);
  o.requests = absl::GetFlag(FLAGS_requests);
  o.batch = std::max<uint64_t>(1, absl::GetFlag(FLAGS_queries_per_request));
  o.rate = absl::GetFlag(FLAGS_rate);
  o.warmup_s = o.requests > 0 ? 0 : absl::GetFlag(FLAGS_warmup_s);
  o.vectors = !absl::GetFlag(FLAGS_omit_vectors);
  o.progress = isatty(STDERR_FILENO) && !absl::GetFlag(FLAGS_json);
  const BenchResult r = RunBench(*client, o);
  if (absl::GetFlag(FLAGS_json)) {
    absl::PrintF(
        "{\"store\": \"%s\", \"concurrency\": %d, \"queries_per_request\": %u, "
        "\"requests\": %u, \"errors\": %u, \"seconds\": %.3f, "
        "\"requests_per_s\": %.2f, \"queries_per_s\": %.2f, \"p50_ms\": %.3f, "
        "\"p90_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f}\n",
        o.store, o.concurrency, o.batch, r.requests, r.errors, r.seconds,
        r.requests_per_s, r.queries_per_s, r.p50_ms, r.p90_ms, r.p99_ms,
        r.max_ms);
  } else {
    absl::PrintF(
        "%u requests (%u errors) in %.2fs at concurrency %d, %u queries each\n"
        "  %.1f requests/s, %.1f queries/s\n"
        "  latency ms: p50 %.2f  p90 %.2f  p99 %.2f  max %.2f\n",
        r.requests, r.errors, r.seconds, o.concurrency, o.batch,
        r.requests_per_s, r.queries_per_s, r.p50_ms, r.p90_ms, r.p99_ms,
        r.max_ms);
  }
  if (r.errors > 0) {
    absl::FPrintF(stderr, "engram: bench: first error: %s\n", r.first_error);
    std::exit(1);
  }
}

void Health(const std::vector<std::string>& args) {
  if (args.size() > 1) Fail("health takes at most one SERVICE");
  absl::StatusOr<std::string> status =
      Connect()->Health(args.empty() ? "" : args[0]);
  FailOn(status.status(), "health");
  if (absl::GetFlag(FLAGS_json)) {
    absl::PrintF("{\"service\": \"%s\", \"status\": \"%s\"}\n",
                 args.empty() ? "" : args[0], *status);
  } else {
    absl::PrintF("%s\n", *status);
  }
  if (*status != "SERVING") std::exit(1);
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(Usage());
  // 'engram COMMAND --help' shows that command; plain --help shows them all.
  std::vector<std::string> words;
  bool help = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "help") {
      help = true;
    } else if (arg.rfind("-", 0) != 0) {
      words.push_back(arg);
    }
    for (const char* name : {"--apply", "-apply", "--noapply", "-noapply"}) {
      const size_t n = std::strlen(name);
      if (arg.compare(0, n, name) == 0 && (arg.size() == n || arg[n] == '=')) {
        apply_given = true;
      }
    }
  }
  if (help) {
    const Command* command = FindCommand(words);
    if (command == nullptr) {
      std::cout << Usage();
    } else {
      std::cout << command->usage << "\n\n" << command->help << "\n";
    }
    return 0;
  }
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  std::vector<std::string> args(positional.begin() + 1, positional.end());
  const Command* command = FindCommand(args);
  if (command == nullptr) {
    std::cerr << Usage();
    return 2;
  }
  const std::string name = command->name;
  args.erase(args.begin(),
             args.begin() + (name.find(' ') == std::string::npos ? 1 : 2));
  if (name == "store create") StoreCreate(args);
  if (name == "store list") StoreList(args);
  if (name == "store get") StoreGet(args);
  if (name == "store delete") StoreDelete(args);
  if (name == "add") Add(args);
  if (name == "retrieve") Retrieve(args);
  if (name == "fit") Fit(args);
  if (name == "calibrate") Calibrate(args);
  if (name == "health") Health(args);
  if (name == "bench") Bench(args);
  if (name == "version") Version(args);
  return 0;
}

}  // namespace
}  // namespace engram::client

int main(int argc, char** argv) { return engram::client::Main(argc, argv); }
