// engram: the command-line client of engramd.
//
//   engram [--addr=HOST:PORT] COMMAND [ARGS] [FLAGS]
//   engram COMMAND --help
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cli/backup.h"
#include "client/cli/bench.h"
#include "client/cli/export.h"
#include "client/cli/fields.h"
#include "client/cli/text.h"
#include "client/client.h"
#include "client/files.h"
#include "client/matrix_io.h"
#include "server/base/file_text.h"
#include "server/base/mutex.h"
#include "server/base/standard_descriptors.h"
#include "server/base/steady_clock.h"

ABSL_FLAG(std::optional<std::string>, addr, std::nullopt,
          "engramd address HOST:PORT or unix:PATH (else $ENGRAM_ADDR, if "
          "set, else 127.0.0.1:50051).");
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
// Store settings: each names one field of engram.v1.Store (kSettingFlags).
// store create and store update send only the ones given, so every default
// is the server's.
ABSL_FLAG(std::string, precision, "",
          "store create: float32 (default), bfloat16 or float16: how values "
          "are kept (fixed at create).");
ABSL_FLAG(std::string, default_ttl, "",
          "store create/update: lifetime of patterns added without one, e.g. "
          "24h (0: they never expire).");
ABSL_FLAG(std::string, similarity, "",
          "store create/update: dot, l2, manhattan, cosine, kernel_dot or "
          "kernel_l2.");
ABSL_FLAG(std::string, separation, "",
          "store create/update: softmax, sparsemax or entmax15.");
ABSL_FLAG(std::optional<std::string>, beta, std::nullopt,
          "Inverse temperature beta > 0 (store create/update; 'auto' on "
          "create calibrates it in the background and applies what it "
          "finds; retrieve: an override).");
ABSL_FLAG(std::optional<uint32_t>, steps, std::nullopt,
          "Update steps (store create/update; retrieve: an override).");
ABSL_FLAG(std::optional<float>, eps, std::nullopt,
          "Stop once an update moves the state by at most eps (store "
          "create/update; retrieve: an override).");
ABSL_FLAG(std::optional<uint32_t>, top_k, std::nullopt,
          "Best matches reported per query (store create/update; retrieve: "
          "an override).");
ABSL_FLAG(std::optional<double>, tolerance, std::nullopt,
          "Error tolerance of the low-rank path (store create/update; "
          "retrieve: an override).");
ABSL_FLAG(uint32_t, max_degree, 0,
          "store create/update: highest Taylor degree of the low-rank sums.");
ABSL_FLAG(bool, auto_calibrate, false,
          "store create/update: calibrate in the background after adds "
          "(and after each fit).");
ABSL_FLAG(bool, apply, false,
          "calibrate: --apply applies the setting found, --apply=false (or "
          "--noapply) only reports it; not given: the store's setting. store "
          "create/update: the store's setting.");
ABSL_FLAG(std::string, corruption, "",
          "store create/update: how calibration corrupts patterns: dropout, "
          "gaussian or mask.");
ABSL_FLAG(float, level, 0,
          "store create/update: calibration's dropout probability, mask "
          "fraction or Gaussian sigma.");
ABSL_FLAG(bool, search_similarity, false,
          "store create/update: calibration may change the similarity too.");
ABSL_FLAG(bool, search_separation, false,
          "store create/update: calibration may change the separation too.");
ABSL_FLAG(uint32_t, sample_size, 0,
          "store create/update: patterns calibration corrupts and retrieves.");
ABSL_FLAG(uint64_t, calibration_seed, 0,
          "store create/update: calibration's seed.");
ABSL_FLAG(std::string, feature_map, "",
          "store create: none, or uhop for a U-Hop Stage I feature map.");
ABSL_FLAG(uint32_t, feature_dim, 0,
          "store create: d_Phi of the feature map (0: the store's dimension).");
ABSL_FLAG(std::string, fit_loss, "", "store create: U-Hop loss, max or mean.");
ABSL_FLAG(std::string, fit_optimizer, "", "store create: sgd or adam.");
ABSL_FLAG(uint32_t, fit_epochs, 0, "store create: epochs per fit.");
ABSL_FLAG(double, fit_learning_rate, 0,
          "store create: fit learning rate (0: the reference's).");
ABSL_FLAG(uint32_t, fit_batch_size, 0,
          "store create: patterns per fit minibatch.");
ABSL_FLAG(uint32_t, fit_debounce_ms, 0,
          "store create: quiet time after adds before an automatic fit.");
ABSL_FLAG(uint32_t, fit_min_new_patterns, 0,
          "store create: new patterns that make an automatic fit due.");
ABSL_FLAG(uint64_t, fit_seed, 0, "store create: seed of the fit.");
ABSL_FLAG(std::string, path, "auto", "retrieve: auto, exact or low_rank.");
ABSL_FLAG(uint64_t, offset, 0, "add/retrieve: first row of FILE to use.");
ABSL_FLAG(uint64_t, limit, 0, "add/retrieve: rows of FILE to use (0: all).");
ABSL_FLAG(uint64_t, batch, 1024,
          "add: patterns per streamed message; retrieve: queries per RPC.");
ABSL_FLAG(std::string, labels, "",
          "add: a file with one label per row of FILE (idx1, npy or csv).");
ABSL_FLAG(std::string, ttl, "",
          "add: the patterns expire this long after the add, e.g. 30m.");
ABSL_FLAG(std::string, patterns, "",
          "add: a patterns.jsonl (from engram export) with each row's id, "
          "label and metadata.");
ABSL_FLAG(uint32_t, page_size, 100, "patterns list: patterns per page.");
ABSL_FLAG(std::string, page_token, "",
          "patterns list: the page to show (from the previous page).");
ABSL_FLAG(bool, all, false, "patterns list: every page.");
ABSL_FLAG(bool, values, false, "patterns list: print the vectors too.");
ABSL_FLAG(bool, wait, false,
          "fit/calibrate: wait for the job to end, showing progress.");
ABSL_FLAG(bool, cancel, false, "fit/calibrate: cancel the store's job.");
ABSL_FLAG(bool, status, false,
          "fit/calibrate: show the job's state (and last result) only.");
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
ABSL_FLAG(std::string, store, "",
          "backup create: the store to back up (default: every store); "
          "backup restore: the store of the backup to restore.");
ABSL_FLAG(std::string, as, "",
          "backup restore: the name to restore the store under (default: "
          "its own).");
ABSL_FLAG(bool, replace, false,
          "backup restore: replace a store of that name.");
ABSL_FLAG(std::vector<std::string>, where_label, {},
          "retrieve: recall among patterns with one of these labels only "
          "(comma-separated).");
ABSL_FLAG(std::vector<std::string>, where, {},
          "retrieve: recall among patterns whose metadata has these KEY=VALUE "
          "entries only (comma-separated; all of them, or any with "
          "--where_any).");
ABSL_FLAG(bool, where_any, false,
          "retrieve: --where entries combine with OR instead of AND.");
ABSL_FLAG(std::string, out, "",
          "retrieve: write the retrieved vectors to this .npy file.");

namespace engram::client {
namespace {

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

// --- Which flags the command line gave -------------------------------------

// Flag names given on the command line ("--beta=2", "--noapply" gives
// "apply"); set by Main. Settings are sent only when given, so every
// default is the server's.
std::set<std::string>& GivenFlags() {
  static auto* given = new std::set<std::string>;
  return *given;
}

bool Given(absl::string_view flag) {
  return GivenFlags().count(std::string(flag)) > 0;
}

void NoteGivenFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "--") && !absl::ConsumePrefix(&arg, "-")) {
      continue;
    }
    const std::string name(arg.substr(0, arg.find('=')));
    GivenFlags().insert(name);
    if (absl::StartsWith(name, "no")) GivenFlags().insert(name.substr(2));
  }
}

// The text of a flag's current value.
std::string FlagText(absl::string_view flag) {
  absl::CommandLineFlag* f = absl::FindCommandLineFlag(flag);
  if (f == nullptr) Fail(absl::StrCat("no flag --", flag));
  return f->CurrentValue();
}

// Store settings flags: each sets one field of engram.v1.Store.
struct SettingFlag {
  const char* flag;
  const char* path;
};
constexpr SettingFlag kSettingFlags[] = {
    {"precision", "precision"},
    {"similarity", "retrieval.similarity"},
    {"default_ttl", "expiry.default_ttl"},
    {"separation", "retrieval.separation"},
    {"beta", "retrieval.beta"},
    {"steps", "retrieval.steps"},
    {"eps", "retrieval.eps"},
    {"top_k", "retrieval.top_k"},
    {"tolerance", "low_rank.tolerance"},
    {"max_degree", "low_rank.max_degree"},
    {"auto_calibrate", "calibration.automatic"},
    {"apply", "calibration.apply"},
    {"corruption", "calibration.corruption"},
    {"level", "calibration.level"},
    {"search_similarity", "calibration.search_similarity"},
    {"search_separation", "calibration.search_separation"},
    {"sample_size", "calibration.sample_size"},
    {"calibration_seed", "calibration.seed"},
    {"feature_map", "feature_map.kind"},
    {"feature_dim", "feature_map.feature_dim"},
    {"fit_loss", "feature_map.loss"},
    {"fit_optimizer", "feature_map.optimizer"},
    {"fit_epochs", "feature_map.epochs"},
    {"fit_learning_rate", "feature_map.learning_rate"},
    {"fit_batch_size", "feature_map.batch_size"},
    {"fit_debounce_ms", "feature_map.debounce_ms"},
    {"fit_min_new_patterns", "feature_map.min_new_patterns"},
    {"fit_seed", "feature_map.seed"},
};

// Sets the fields of `store` whose flags were given; returns their paths.
// --beta=auto (create only) turns on automatic calibration that applies.
std::vector<std::string> SettingsFromFlags(v1::Store& store, bool create) {
  std::vector<std::string> paths;
  for (const SettingFlag& s : kSettingFlags) {
    if (!Given(s.flag)) continue;
    const std::string text = FlagText(s.flag);
    if (absl::string_view(s.flag) == "beta" && text == "auto") {
      if (!create) {
        Fail("--beta=auto is for store create; use --auto_calibrate --apply");
      }
      if (!Given("auto_calibrate"))
        store.mutable_calibration()->set_automatic(true);
      if (!Given("apply")) store.mutable_calibration()->set_apply(true);
      continue;
    }
    FailOn(SetFieldFromText(store, s.path, text, s.flag));
    paths.push_back(s.path);
  }
  return paths;
}

// --- Connecting --------------------------------------------------------------

std::string ReadFileOrFail(const std::string& path, const char* flag) {
  absl::StatusOr<std::string> text = ReadFileText(path, size_t{4} << 20);
  if (!text.ok()) Fail(absl::StrCat("--", flag, ": ", text.status().message()));
  return *std::move(text);
}

// --addr, else a non-empty $ENGRAM_ADDR, else engramd's default address.
std::string ServerAddress() {
  if (std::optional<std::string> addr = absl::GetFlag(FLAGS_addr)) {
    return *std::move(addr);
  }
  const char* env = std::getenv("ENGRAM_ADDR");
  return env != nullptr && *env != '\0' ? env : "127.0.0.1:50051";
}

std::unique_ptr<Client> Connect() {
  ClientOptions options;
  options.address = ServerAddress();
  options.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  if (!absl::GetFlag(FLAGS_tls_ca).empty()) {
    options.tls_ca = ReadFileOrFail(absl::GetFlag(FLAGS_tls_ca), "tls_ca");
  }
  if (!absl::GetFlag(FLAGS_tls_cert).empty()) {
    options.tls_cert =
        ReadFileOrFail(absl::GetFlag(FLAGS_tls_cert), "tls_cert");
    options.tls_key = ReadFileOrFail(absl::GetFlag(FLAGS_tls_key), "tls_key");
  }
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  if (!absl::GetFlag(FLAGS_token_file).empty()) {
    options.token = std::string(absl::StripAsciiWhitespace(
        ReadFileOrFail(absl::GetFlag(FLAGS_token_file), "token_file")));
  } else if (const char* token = std::getenv("ENGRAM_TOKEN")) {
    options.token = token;
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  FailOn(client.status());
  return std::move(*client);
}

// Prints the message as JSON with --json, else `text`.
void Print(const google::protobuf::Message& message, const std::string& text) {
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << Json(message);
  } else {
    std::cout << text;
  }
}

template <typename T>
T Parse(const std::string& text, const char* what) {
  T value{};
  if (!absl::SimpleAtoi(text, &value)) {
    Fail(absl::StrCat(what, " must be a whole number, got '", text, "'"));
  }
  return value;
}

// --beta as a number, if given ('auto' is store create's alone).
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

// --- Stores ------------------------------------------------------------------

void StoreCreate(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("store create takes one NAME; see --help");
  if (absl::GetFlag(FLAGS_dim) == 0) Fail("store create needs --dim=D (> 0)");
  v1::Store store;
  store.set_name(args[0]);
  store.set_dimension(absl::GetFlag(FLAGS_dim));
  SettingsFromFlags(store, /*create=*/true);
  absl::StatusOr<v1::Store> created = Connect()->CreateStore(store);
  FailOn(created.status(), "store create");
  Print(*created, absl::StrFormat("created store %s (dimension %u)\n",
                                  created->name(), created->dimension()));
}

void StoreUpdate(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("store update takes one NAME; see --help");
  v1::Store store;
  store.set_name(args[0]);
  const std::vector<std::string> paths =
      SettingsFromFlags(store, /*create=*/false);
  if (paths.empty()) {
    Fail("store update needs a setting to change, e.g. --beta=2 --top_k=3");
  }
  absl::StatusOr<v1::Store> updated = Connect()->UpdateStore(store, paths);
  FailOn(updated.status(), "store update");
  Print(*updated, StoreText(*updated));
}

void StoreList(const std::vector<std::string>& args) {
  if (!args.empty()) Fail("store list takes no arguments");
  absl::StatusOr<std::vector<v1::Store>> stores = Connect()->ListStores();
  FailOn(stores.status(), "store list");
  v1::ListStoresResponse all;
  size_t width = 4;
  for (const v1::Store& s : *stores) {
    *all.add_stores() = s;
    width = std::max(width, s.name().size());
  }
  std::string text = absl::StrFormat(
      "%-*s %9s %10s %-10s %-10s %8s %6s\n", width, "NAME", "DIMENSION",
      "PATTERNS", "SIMILARITY", "SEPARATION", "BETA", "STEPS");
  for (const v1::Store& s : *stores) {
    absl::StrAppendFormat(&text, "%-*s %9u %10u %-10s %-10s %8g %6u\n", width,
                          s.name(), s.dimension(), s.pattern_count(),
                          EnumText(s.retrieval().similarity()),
                          EnumText(s.retrieval().separation()),
                          s.retrieval().beta(), s.retrieval().steps());
  }
  Print(all, text);
}

void StoreGet(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("store get takes one NAME");
  absl::StatusOr<v1::Store> store = Connect()->GetStore(args[0]);
  FailOn(store.status(), "store get");
  Print(*store, StoreText(*store));
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

// --- Patterns ----------------------------------------------------------------

Matrix Load(const std::string& path) {
  absl::StatusOr<Matrix> m =
      ReadMatrix(path, absl::GetFlag(FLAGS_offset), absl::GetFlag(FLAGS_limit));
  FailOn(m.status());
  if (m->rows == 0) Fail(absl::StrCat(path, ": no rows to use"));
  return std::move(*m);
}

// A store's dimension, refusing a file whose rows differ.
void CheckDimension(Client& client, const std::string& store,
                    const std::string& file, size_t cols) {
  absl::StatusOr<v1::Store> s = client.GetStore(store);
  FailOn(s.status(), store);
  if (s->dimension() != cols) {
    Fail(absl::StrCat(file, " has rows of ", cols, " values; store '", store,
                      "' has dimension ", s->dimension()));
  }
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
  std::vector<v1::Pattern> details;
  if (!absl::GetFlag(FLAGS_patterns).empty()) {
    absl::StatusOr<std::vector<v1::Pattern>> read = ReadPatternDetails(
        absl::GetFlag(FLAGS_patterns), absl::GetFlag(FLAGS_offset), m.rows);
    FailOn(read.status(), "add");
    details = *std::move(read);
  }
  if (!absl::GetFlag(FLAGS_ttl).empty()) {
    absl::Duration ttl;
    if (!absl::ParseDuration(absl::GetFlag(FLAGS_ttl), &ttl)) {
      Fail(absl::StrCat("--ttl=", absl::GetFlag(FLAGS_ttl),
                        ": not a duration such as 90s, 30m or 24h"));
    }
    details.resize(m.rows);
    const int64_t nanos = absl::ToInt64Nanoseconds(ttl);
    for (v1::Pattern& p : details) {
      p.mutable_ttl()->set_seconds(nanos / 1000000000);
      p.mutable_ttl()->set_nanos(static_cast<int32_t>(nanos % 1000000000));
    }
  }
  std::unique_ptr<Client> client = Connect();
  CheckDimension(*client, args[0], args[1], m.cols);
  const bool tty = isatty(STDERR_FILENO);
  const absl::Time start = SteadyNow();
  absl::StatusOr<v1::ImportPatternsResponse> done = client->Import(
      args[0], m.data, m.cols, labels, absl::GetFlag(FLAGS_batch),
      [&](size_t sent) {
        if (tty) {
          absl::FPrintF(stderr, "\r%s", ProgressBar(sent, m.rows, "patterns"));
        }
      },
      details);
  if (tty) absl::FPrintF(stderr, "\n");
  FailOn(done.status(), "add");
  Print(*done,
        absl::StrFormat(
            "added %u patterns (ids %u..%u) to %s in %.2fs; it holds %u\n",
            done->patterns_added(), done->first_id(), done->last_id(), args[0],
            SecondsSince(start), done->pattern_count()));
}

void PatternsList(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("patterns list takes one NAME");
  std::unique_ptr<Client> client = Connect();
  const bool values = absl::GetFlag(FLAGS_values);
  std::string token = absl::GetFlag(FLAGS_page_token);
  v1::ListPatternsResponse all;
  do {
    absl::StatusOr<v1::ListPatternsResponse> page = client->ListPatterns(
        args[0], token, absl::GetFlag(FLAGS_page_size), !values);
    FailOn(page.status(), "patterns list");
    all.mutable_patterns()->MergeFrom(page->patterns());
    token = page->next_page_token();
  } while (absl::GetFlag(FLAGS_all) && !token.empty());
  all.set_next_page_token(token);
  std::string text;
  for (const v1::Pattern& p : all.patterns()) {
    absl::StrAppend(&text, PatternText(p, values), "\n");
  }
  if (!token.empty()) {
    absl::StrAppend(&text, "next page: --page_token=", token, "\n");
  }
  Print(all, text);
}

void PatternsGet(const std::vector<std::string>& args) {
  if (args.size() != 2) Fail("patterns get takes NAME ID");
  absl::StatusOr<v1::Pattern> p =
      Connect()->GetPattern(args[0], Parse<uint64_t>(args[1], "ID"));
  FailOn(p.status(), "patterns get");
  Print(*p, PatternText(*p, /*values=*/true) + "\n");
}

void PatternsDelete(const std::vector<std::string>& args) {
  if (args.size() < 2) Fail("patterns delete takes NAME ID [ID...]");
  std::vector<uint64_t> ids;
  for (size_t i = 1; i < args.size(); ++i) {
    ids.push_back(Parse<uint64_t>(args[i], "ID"));
  }
  absl::StatusOr<v1::DeletePatternsResponse> done =
      Connect()->DeletePatterns(args[0], ids);
  FailOn(done.status(), "patterns delete");
  Print(*done, absl::StrFormat("deleted %u patterns from %s; it holds %u\n",
                               ids.size(), args[0], done->pattern_count()));
}

// --- Retrieval ---------------------------------------------------------------

std::string RetrieveText(const v1::RetrieveResponse& all) {
  std::string text = absl::StrFormat(
      "path %s (%s)\n", EnumText(all.path().path()), all.path().reason());
  for (int i = 0; i < all.results_size(); ++i) {
    const v1::QueryResult& r = all.results(i);
    std::vector<std::string> matches;
    for (const v1::Match& m : r.matches()) {
      matches.push_back(absl::StrFormat(
          "%u%s:%.3f", m.id(), m.label().empty() ? "" : "[" + m.label() + "]",
          m.weight()));
    }
    absl::StrAppendFormat(&text, "query %d: energy %.4g, steps %u%s; top %s\n",
                          absl::GetFlag(FLAGS_offset) + i, r.energy(),
                          r.steps(), r.converged() ? " (converged)" : "",
                          absl::StrJoin(matches, " "));
  }
  return text;
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
  absl::StatusOr<int> path = EnumFromText(*v1::RetrievalPath_descriptor(),
                                          absl::GetFlag(FLAGS_path), "path");
  FailOn(path.status());
  request.set_path(static_cast<v1::RetrievalPath>(*path));
  for (const std::string& label : absl::GetFlag(FLAGS_where_label)) {
    request.mutable_filter()->add_labels(label);
  }
  for (const std::string& entry : absl::GetFlag(FLAGS_where)) {
    const size_t eq = entry.find('=');
    if (eq == std::string::npos) {
      Fail(absl::StrCat("--where takes KEY=VALUE entries, got '", entry, "'"));
    }
    v1::MetadataCondition* c = request.mutable_filter()->add_metadata();
    c->set_key(entry.substr(0, eq));
    c->set_value(entry.substr(eq + 1));
  }
  if (absl::GetFlag(FLAGS_where_any)) {
    request.mutable_filter()->set_combine(v1::Filter::ANY);
  }
  const std::string out_path = absl::GetFlag(FLAGS_out);
  request.set_omit_vectors(out_path.empty());

  std::unique_ptr<Client> client = Connect();
  CheckDimension(*client, args[0], args[1], q.cols);
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
  std::string text = RetrieveText(all);
  if (!out_path.empty()) {
    absl::StrAppendFormat(&text, "wrote %zu x %zu retrieved vectors to %s\n",
                          retrieved.rows, retrieved.cols, out_path);
  }
  Print(all, text);
}

// --- Jobs: fit and calibration -----------------------------------------------

// The calls of one kind of job and its text.
template <typename Status>
struct JobCalls {
  const char* what;
  std::function<absl::StatusOr<Status>()> get, start, cancel;
  std::function<absl::StatusOr<Status>(std::function<void(const Status&)>)>
      watch;
  std::function<std::string(const Status&)> line, details;
};

// Starts the store's job (--cancel: cancels it; --status: only reads its
// state); with --wait follows it to its end and fails unless it succeeded.
template <typename Status>
void RunJob(const std::string& store, const JobCalls<Status>& job) {
  const bool cancel = absl::GetFlag(FLAGS_cancel);
  const bool read = absl::GetFlag(FLAGS_status);
  absl::StatusOr<Status> status = read     ? job.get()
                                  : cancel ? job.cancel()
                                           : job.start();
  FailOn(status.status(), job.what);
  const bool wait = absl::GetFlag(FLAGS_wait) && !cancel;
  if (wait) {
    const bool tty = isatty(STDERR_FILENO);
    status = job.watch([&](const Status& s) {
      if (tty) absl::FPrintF(stderr, "\r%s", job.line(s));
    });
    if (tty) absl::FPrintF(stderr, "\n");
    FailOn(status.status(), job.what);
  }
  Print(*status, absl::StrCat(store, ": ", job.line(*status), "\n",
                              job.details(*status)));
  if (wait && status->state() != Status::SUCCEEDED) std::exit(1);
}

void Fit(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("fit takes one NAME");
  std::unique_ptr<Client> client = Connect();
  const std::string& store = args[0];
  RunJob<v1::FitStatus>(
      store,
      {"fit", [&] { return client->GetFitStatus(store); },
       [&] { return client->StartFit(store); },
       [&] { return client->CancelFit(store); },
       [&](auto on_status) { return client->WatchFit(store, on_status); },
       FitLine, [](const v1::FitStatus&) { return std::string(); }});
}

void Calibrate(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("calibrate takes one NAME");
  std::unique_ptr<Client> client = Connect();
  const std::string& store = args[0];
  std::optional<bool> apply;
  if (Given("apply")) apply = absl::GetFlag(FLAGS_apply);
  RunJob<v1::CalibrationStatus>(
      store, {"calibrate", [&] { return client->GetCalibrationStatus(store); },
              [&] { return client->StartCalibration(store, apply); },
              [&] { return client->CancelCalibration(store); },
              [&](auto on_status) {
                return client->WatchCalibration(store, on_status);
              },
              CalibrationLine,
              [](const v1::CalibrationStatus& s) {
                const bool busy = s.state() == v1::CalibrationStatus::PENDING ||
                                  s.state() == v1::CalibrationStatus::RUNNING;
                return !busy && s.has_report() ? ReportText(s.report())
                                               : std::string();
              }});
}

// --- Load, health, version
// ----------------------------------------------------

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
    CheckDimension(*client, args[0], absl::GetFlag(FLAGS_queries), q.cols);
    o.queries = q.data;
  } else {
    absl::StatusOr<v1::ListPatternsResponse> page =
        client->ListPatterns(args[0], "", 256);
    FailOn(page.status(), "bench");
    if (page->patterns_size() == 0) {
      Fail(absl::StrCat("store '", args[0], "' is empty"));
    }
    std::mt19937 rng(1);
    std::normal_distribution<float> noise(0.0f, 0.05f);
    for (const v1::Pattern& p : page->patterns()) {
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

std::string HumanBytes(uint64_t bytes) {
  if (bytes < (1 << 20)) return absl::StrFormat("%.1f KiB", bytes / 1024.0);
  if (bytes < (uint64_t{1} << 30)) {
    return absl::StrFormat("%.1f MiB", bytes / 1048576.0);
  }
  return absl::StrFormat("%.2f GiB", bytes / 1073741824.0);
}

// What a backup holds, one line per store.
std::string DescribeBackup(const std::string& dir,
                           const store::BackupManifest& manifest) {
  uint64_t bytes = 0;
  std::string stores;
  for (const store::BackupStore& s : manifest.stores()) {
    uint64_t store_bytes = 0;
    for (const auto& file : s.files()) store_bytes += file.bytes();
    bytes += store_bytes;
    absl::StrAppendFormat(&stores, "  %-24s %10u patterns  map v%u  %s\n",
                          s.name(), s.patterns(), s.map_version(),
                          HumanBytes(store_bytes));
  }
  return absl::StrFormat(
      "%s: engram backup of %d store(s), %s, taken %s by engram %s\n%s", dir,
      manifest.stores_size(), HumanBytes(bytes), manifest.create_time(),
      manifest.engram_version(), stores);
}

void Export(const std::vector<std::string>& args) {
  if (args.size() != 2) Fail("export takes NAME DIR");
  absl::StatusOr<size_t> exported = ExportStore(*Connect(), args[0], args[1]);
  FailOn(exported.status(), "export");
  const std::string dir = NewDirectoryName(args[1]);
  absl::PrintF("exported %u patterns of %s to %s/%s and %s/%s\n", *exported,
               args[0], dir, kValuesFile, dir, kPatternsFile);
}

void BackupCreate(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("backup create takes one DIR");
  absl::StatusOr<store::BackupManifest> manifest =
      CreateBackupDir(*Connect(), absl::GetFlag(FLAGS_store), args[0]);
  FailOn(manifest.status(), "backup create");
  Print(*manifest, DescribeBackup(args[0], *manifest) + "verified\n");
}

void BackupVerify(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("backup verify takes one DIR");
  absl::StatusOr<store::BackupManifest> manifest = VerifyBackupDir(args[0]);
  FailOn(manifest.status(), "backup verify");
  Print(*manifest, DescribeBackup(args[0], *manifest) +
                       "every file matches the manifest; every store reads\n");
}

void BackupRestore(const std::vector<std::string>& args) {
  if (args.size() != 1) Fail("backup restore takes one DIR");
  absl::StatusOr<v1::Store> store =
      RestoreFromDir(*Connect(), args[0], absl::GetFlag(FLAGS_store),
                     absl::GetFlag(FLAGS_as), absl::GetFlag(FLAGS_replace));
  FailOn(store.status(), "backup restore");
  Print(*store, absl::StrFormat("restored store '%s': %u patterns\n",
                                store->name(), store->pattern_count()));
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

void ClusterStatus(const std::vector<std::string>& args) {
  if (!args.empty()) Fail("cluster status takes no arguments");
  absl::StatusOr<cluster::v1::ClusterState> status = Connect()->ClusterStatus();
  FailOn(status.status(), "cluster status");
  std::string text =
      absl::StrFormat("cluster %s: %u shard groups of %u replicas\n",
                      status->cluster(), status->groups(), status->replicas());
  for (const cluster::v1::ReplicaState& r : status->shards()) {
    absl::StrAppendFormat(&text, "group %u  %-28s %-9s %s\n", r.group(),
                          r.address(), r.ready() ? "ready" : "NOT READY",
                          r.detail());
    for (const cluster::v1::StoreState& s : r.stores()) {
      absl::StrAppendFormat(&text, "    store %-20s %10u patterns  map v%u%s\n",
                            s.name(), s.pattern_count(), s.map_version(),
                            s.state() == v1::Store::DAMAGED ? "  DAMAGED" : "");
    }
  }
  Print(*status, text);
  for (const cluster::v1::ReplicaState& r : status->shards()) {
    if (!r.ready()) std::exit(1);
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

// --- Commands
// ------------------------------------------------------------------

struct Command {
  const char* name;
  const char* usage;
  const char* help;
  void (*run)(const std::vector<std::string>& args);
};

constexpr char kSettingsUsage[] =
    "[--similarity=S] [--separation=S] [--beta=B] [--steps=N] [--eps=E] "
    "[--top_k=K] [--tolerance=T] [--max_degree=G] [--auto_calibrate] "
    "[--apply] [--corruption=C] [--level=L] [--search_similarity] "
    "[--search_separation] [--sample_size=N] [--calibration_seed=N] "
    "[--default_ttl=DURATION]";

// The flags of every command that talks to a server.
constexpr char kConnectionUsage[] =
    "[--addr=HOST:PORT|unix:PATH (else $ENGRAM_ADDR, else "
    "127.0.0.1:50051)] "
    "[--timeout_s=300] [--tls_ca=CA.pem [--tls_cert=CERT.pem "
    "--tls_key=KEY.pem] [--tls_server_name=NAME]] [--token_file=FILE (else "
    "$ENGRAM_TOKEN)]";

const Command kCommands[] = {
    {"store create",
     "engram store create NAME --dim=D [--precision=float32|bfloat16|float16] "
     "[SETTINGS] [--beta=auto] "
     "[--feature_map=uhop] [--feature_dim=N] [--fit_loss=max|mean] "
     "[--fit_optimizer=sgd|adam] [--fit_epochs=N] [--fit_learning_rate=R] "
     "[--fit_batch_size=N] [--fit_debounce_ms=N] [--fit_min_new_patterns=N] "
     "[--fit_seed=N]",
     "Creates a store of D-dimensional patterns. Settings not given take the "
     "server's defaults ('engram store get' shows them). --beta=auto "
     "calibrates in the background once patterns arrive (and after each "
     "fit) and applies the best setting found.",
     StoreCreate},
    {"store list", "engram store list [--json]", "Lists the stores.",
     StoreList},
    {"store get", "engram store get NAME [--json]",
     "Shows a store's settings and statistics.", StoreGet},
    {"store update", "engram store update NAME SETTINGS [--json]",
     "Changes the settings given (and only those) of a store; the others "
     "keep their values.",
     StoreUpdate},
    {"store delete", "engram store delete NAME",
     "Deletes a store and all its patterns.", StoreDelete},
    {"add",
     "engram add NAME FILE [--offset=N] [--limit=N] [--labels=FILE] "
     "[--patterns=FILE.jsonl] [--ttl=DURATION] [--batch=1024]",
     "Adds the rows of FILE as patterns. FILE is a 2-D .npy (float32 or "
     "float64), a .csv, or an idx-ubyte file (pixels scaled to [0,1]), "
     "gzipped or not. --patterns gives each row's id, label and metadata "
     "(the patterns.jsonl of engram export).",
     Add},
    {"patterns list",
     "engram patterns list NAME [--page_size=100] [--page_token=T] [--all] "
     "[--values] [--json]",
     "Lists a store's patterns in id order: id, label and metadata (and the "
     "vectors with --values), a page at a time or --all.",
     PatternsList},
    {"patterns get", "engram patterns get NAME ID [--json]",
     "Shows one pattern with its vector.", PatternsGet},
    {"patterns delete", "engram patterns delete NAME ID [ID...]",
     "Deletes patterns by id, all or none.", PatternsDelete},
    {"retrieve",
     "engram retrieve NAME FILE [--out=OUT.npy] [--top_k=K] "
     "[--json] [--beta=B] [--steps=S] [--eps=E] "
     "[--path=auto|exact|low_rank] [--tolerance=T] [--offset=N] "
     "[--limit=N] [--batch=1024] [--where_label=L,...] [--where=K=V,...] "
     "[--where_any]",
     "Recalls stored patterns from the rows of FILE used as queries; "
     "--where_label and --where restrict the recall to the matching "
     "patterns, exactly as if the store held only them.",
     Retrieve},
    {"calibrate",
     "engram calibrate NAME [--wait] [--cancel | --status] [--apply[=false]] "
     "[--json]",
     "Queues a self-retrieval calibration of the store now: corrupts a "
     "sample of its patterns, searches beta (and, if the store allows, the "
     "similarity and separation) and applies or reports the best; --wait "
     "follows it to the end and prints the report; --cancel cancels it; "
     "--status shows its state and last report.",
     Calibrate},
    {"fit", "engram fit NAME [--wait] [--cancel | --status] [--json]",
     "Starts a Stage I fit of a U-Hop store now (or shows the running one); "
     "--wait follows its progress to the end; --cancel cancels it; --status "
     "shows its state.",
     Fit},
    {"bench",
     "engram bench NAME [--concurrency=1] [--duration_s=10 | "
     "--requests=N] [--queries_per_request=1] [--rate=R] "
     "[--warmup_s=1] [--queries=FILE] [--omit_vectors] [--json]",
     "Load-tests Retrieve on a store: prints requests/s, queries/s and "
     "latency p50/p90/p99/max.",
     Bench},
    {"cluster status", "engram cluster status [--json]",
     "A router's shards: each group's replicas, whether they serve (and why "
     "not), and per store the patterns and the feature map each holds. Exits "
     "non-zero if a replica is not ready.",
     ClusterStatus},
    {"export", "engram export NAME DIR",
     "Writes a store's patterns in id order to DIR/values.npy (float32) and "
     "DIR/patterns.jsonl (id, label, metadata per row), which 'engram add "
     "NAME DIR/values.npy --patterns=DIR/patterns.jsonl' reads back.",
     Export},
    {"backup create", "engram backup create DIR [--store=NAME] [--json]",
     "Writes an online, consistent backup of every store (or one) into DIR, "
     "a new directory, and verifies it. Writes and fits go on meanwhile.",
     BackupCreate},
    {"backup verify", "engram backup verify DIR [--json]",
     "Checks every file of the backup in DIR against its manifest and reads "
     "every store; no server needed.",
     BackupVerify},
    {"backup restore",
     "engram backup restore DIR [--store=NAME] [--as=NEW] [--replace]",
     "Restores one store of the backup in DIR into the server, under its own "
     "name or --as; all of it or nothing. A store of that name is only "
     "replaced with --replace. A whole server: engramd --restore_from=DIR.",
     BackupRestore},
    {"health", "engram health [SERVICE]",
     "Checks the server's health (liveness), or a service's (readiness: "
     "engram.v1.Engram).",
     Health},
    {"version", "engram version", "Prints the client's version and API.",
     Version},
};

std::string Usage() {
  std::string text =
      "engram: the command-line client of engramd.\n\nUsage: engram "
      "[CONNECTION] COMMAND ...\n\nCommands:\n";
  for (const Command& c : kCommands) {
    absl::StrAppend(&text, "  ", c.usage, "\n      ", c.help, "\n");
  }
  absl::StrAppend(&text, "\nSETTINGS: ", kSettingsUsage,
                  "\n\nCONNECTION: ", kConnectionUsage,
                  "\n\n'engram COMMAND --help' shows one command.\n");
  return text;
}

std::string CommandHelp(const Command& c) {
  std::string text = absl::StrCat(c.usage, "\n\n", c.help, "\n");
  if (absl::StrContains(c.usage, "SETTINGS")) {
    absl::StrAppend(&text, "\nSETTINGS: ", kSettingsUsage, "\n");
  }
  // Only these two never talk to a server.
  const absl::string_view name = c.name;
  if (name != "version" && name != "backup verify") {
    absl::StrAppend(&text, "\nCONNECTION: ", kConnectionUsage, "\n");
  }
  return text;
}

const Command* FindCommand(const std::vector<std::string>& words) {
  const std::string first = words.empty() ? "" : words[0];
  const std::string two = words.size() > 1 ? first + " " + words[1] : first;
  for (const Command& c : kCommands) {
    if (c.name == first || c.name == two) return &c;
  }
  return nullptr;
}

int Main(int argc, char** argv) {
  absl::FlagsUsageConfig usage;
  usage.version_string = [] {
    return std::string("engram " ENGRAM_VERSION " (API engram.v1)\n");
  };
  absl::SetFlagsUsageConfig(usage);
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
  }
  if (help) {
    const Command* command = FindCommand(words);
    std::cout << (command == nullptr ? Usage() : CommandHelp(*command));
    return 0;
  }
  NoteGivenFlags(argc, argv);
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
  command->run(args);
  return 0;
}

}  // namespace
}  // namespace engram::client

// Read by LeakSanitizer in the sanitizer builds (unused otherwise). A
// thread of gRPC's that is still exiting when the CLI returns frees its
// OpenSSL error state (904 bytes from CRYPTO_zalloc) in its last steps,
// after the sanitizer has stopped tracking it: about one TLS call in a
// hundred was reported as a leak, and the report's exit code and the
// unflushed output failed the call that had succeeded. The CLI allocates
// nothing through OpenSSL itself.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:CRYPTO_zalloc\n";
}
// Nor is the suppression listed on stderr, which the CLI's callers read.
extern "C" const char* __lsan_default_options() {
  return "print_suppressions=0";
}

int main(int argc, char** argv) {
  if (!engram::OpenStandardDescriptors()) return 1;
  engram::SkipLockOrderChecks();
  return engram::client::Main(argc, argv);
}
