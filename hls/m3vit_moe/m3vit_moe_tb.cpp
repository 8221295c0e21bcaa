// C-simulation testbench of the M3ViT MoE layer (g++ or Vitis HLS csim).
//
//   m3vit_moe_tb VECTOR_DIR [--out RESULT.json] [--dump DIR] [--skip-baseline]
//
// VECTOR_DIR is written by fastpaper.moe.export_hls: vectors.txt (sizes, tasks, tolerances), the
// layer in the DRAM layout the design reads (*.fx.bin fixed point, *.f32.bin for the float
// build) and, per checked task, the input x and the float64 torch reference (output, top-k
// experts, margin).
// For each task it runs the reordered design and the token-by-token baseline and checks:
//   - outputs within the fixed-point tolerance of the reference (rel. RMS and max error);
//   - routing equals the reference, except tokens whose k-th/(k+1)-th probability margin is below
//     the format's resolution (those are excluded from the output check and counted);
//   - traffic: every active expert's block read exactly once, inactive experts never, weight
//     bytes = active * block; the baseline reads each expert once per routed token;
//   - the baseline's output equals the reordered output (bit-identical in fixed point).
// Exit status 0 when everything passes. Results as JSON (--out) and raw y words (--dump).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "m3vit_moe.h"

using namespace m3vit;

#ifdef M3VIT_FLOAT
static const char* kBuild = "float";
static const char* kExt = "f32";
#else
static const char* kBuild = "fixed";
static const char* kExt = "fx";
#endif

typedef std::map<std::string, std::vector<std::string>> Params;

static Params read_params(const std::string& path) {
  Params p;
  std::ifstream f(path);
  if (!f) { std::fprintf(stderr, "cannot open %s\n", path.c_str()); std::exit(2); }
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ls(line);
    std::string key, v;
    if (!(ls >> key) || key[0] == '#') continue;
    while (ls >> v) p[key].push_back(v);
  }
  return p;
}

static double num(const Params& p, const char* key) {
  auto it = p.find(key);
  if (it == p.end() || it->second.empty()) {
    std::fprintf(stderr, "vectors.txt: missing %s\n", key);
    std::exit(2);
  }
  return std::atof(it->second[0].c_str());
}

static std::vector<char> read_file(const std::string& path, size_t expect) {
  std::ifstream f(path, std::ios::binary);
  if (!f) { std::fprintf(stderr, "cannot open %s\n", path.c_str()); std::exit(2); }
  std::vector<char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (buf.size() != expect) {
    std::fprintf(stderr, "%s: %zu bytes, expected %zu\n", path.c_str(), buf.size(), expect);
    std::exit(2);
  }
  return buf;
}

// Little-endian words of `bits` bits -> beats of `per` words.
template <class Beat>
static std::vector<Beat> to_beats(const std::vector<char>& raw, int bits, int per) {
  const size_t bytes = bits / 8, words = raw.size() / bytes;
  std::vector<Beat> beats(words / per);
  for (size_t w = 0; w < words; ++w) {
    uint64_t v = 0;
    std::memcpy(&v, raw.data() + w * bytes, bytes);
    beats[w / per].range(bits * (w % per) + bits - 1, bits * (w % per)) = v;
  }
  return beats;
}

static double io_value(const abeat_t& b, int a) {
  return (double)word_to_io(b.range(IOBITS * a + IOBITS - 1, IOBITS * a));
}

struct Errors { double max_abs = 0, rel_rms = 0, max_ref = 0; int checked = 0; };

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s VECTOR_DIR [--out RESULT.json] [--dump DIR] [--skip-baseline]\n",
                 argv[0]);
    return 2;
  }
  std::string dir = argv[1], out_path, dump_dir;
  bool skip_baseline = false;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--out" && i + 1 < argc) out_path = argv[++i];
    else if (a == "--dump" && i + 1 < argc) dump_dir = argv[++i];
    else if (a == "--skip-baseline") skip_baseline = true;
    else { std::fprintf(stderr, "unknown argument %s\n", a.c_str()); return 2; }
  }
  Params p = read_params(dir + "/vectors.txt");
  const int n = (int)num(p, "N"), tasks = (int)num(p, "tasks");
  if ((int)num(p, "D") != D || (int)num(p, "H") != H || (int)num(p, "E") != E ||
      (int)num(p, "K") != K || n > MAX_N || n < 1) {
    std::fprintf(stderr, "vectors (D=%g H=%g E=%g K=%g N=%d) do not fit this build (D=%d H=%d E=%d "
                 "K=%d MAX_N=%d)\n", num(p, "D"), num(p, "H"), num(p, "E"), num(p, "K"), n, D, H,
                 E, K, MAX_N);
    return 2;
  }
  const std::string b = kBuild;
  const double tol_rms = num(p, ("tol_rel_rms_" + b).c_str());
  const double tol_max = num(p, ("tol_max_" + b).c_str());
  const double margin_tol = num(p, ("margin_tol_" + b).c_str());

  const int wbytes = WBITS / 8;
  auto ex = to_beats<wbeat_t>(
      read_file(dir + "/experts." + kExt + ".bin", (size_t)E * EXPERT_BEATS * TO * wbytes), WBITS,
      TO);
  auto gt = to_beats<wbeat_t>(
      read_file(dir + "/gate." + kExt + ".bin", (size_t)tasks * GATE_BEATS * TO * wbytes), WBITS,
      TO);

  bool all_pass = true;
  std::ostringstream js;
  js.precision(10);
  js << "{\n  \"build\": \"" << kBuild << "\", \"D\": " << D << ", \"H\": " << H << ", \"E\": " << E
     << ", \"K\": " << K << ", \"N\": " << n << ", \"TT\": " << TT << ", \"TI\": " << TI
     << ", \"TO\": " << TO << ",\n  \"expert_bytes\": " << EXPERT_BYTES
     << ", \"gate_bytes\": " << GATE_BYTES << ",\n";

  // Error of the datapath's GELU and exp against the exact functions on a fine grid.
  double gelu_err = 0, exp_err = 0;
  for (int i = -12 * 1024; i <= 12 * 1024; ++i) {
    double v = i / 1024.0;
    double ref = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    gelu_err = std::fmax(gelu_err, std::fabs((double)gelu(acc_t(v)) - ref));
  }
  for (int i = 0; i <= 20 * 1024; ++i) {
    double u = i / 1024.0;
    exp_err = std::fmax(exp_err, std::fabs((double)exp_neg(acc_t(u)) - std::exp(-u)));
  }
  js << "  \"gelu_max_abs_error\": " << gelu_err << ", \"exp_max_abs_error\": " << exp_err
     << ",\n  \"tasks\": [\n";

  const std::vector<std::string>& check = p["check_tasks"];
  for (size_t ti = 0; ti < check.size(); ++ti) {
    const int task = std::atoi(check[ti].c_str());
    const std::string pre = dir + "/task" + check[ti];
    auto yref_raw = read_file(pre + ".y_ref.f64", (size_t)n * D * 8);
    auto idx_raw = read_file(pre + ".idx.i32", (size_t)n * K * 4);
    auto mrg_raw = read_file(pre + ".margin.f64", (size_t)n * 8);
    const double* yref = (const double*)yref_raw.data();
    const int32_t* ridx = (const int32_t*)idx_raw.data();
    const double* margin = (const double*)mrg_raw.data();
    auto xs = to_beats<abeat_t>(read_file(pre + ".x." + kExt + ".bin", (size_t)n * D * 4), 32, AV);

    std::vector<abeat_t> y(n * ROW_BEATS), yb(n * ROW_BEATS);
    g_sim.reset();
    m3vit_moe(xs.data(), y.data(), ex.data(), gt.data(), n, task);
    SimCounters re = g_sim;
    SimCounters ba{};
    if (!skip_baseline) {
      g_sim.reset();
      m3vit_moe_token_by_token(xs.data(), yb.data(), ex.data(), gt.data(), n, task);
      ba = g_sim;
    }

    // Routing against the reference.
    std::vector<char> excluded(n, 0);
    int mismatched = 0, unexcused = 0;
    for (int t = 0; t < n; ++t) {
      bool same = true;
      for (int j = 0; j < K; ++j) {
        bool found = false;
        for (int i = 0; i < K; ++i) found |= re.route_idx[t * K + i] == ridx[t * K + j];
        same &= found;
      }
      if (!same) {
        ++mismatched;
        excluded[t] = 1;
        if (margin[t] >= margin_tol) ++unexcused;
      }
    }
    // Output error on the tokens routed as in the reference.
    Errors err;
    double se = 0, sr = 0;
    for (int t = 0; t < n; ++t) {
      for (int d = 0; d < D; ++d) {
        const double r = yref[t * D + d];
        err.max_ref = std::fmax(err.max_ref, std::fabs(r));
        if (excluded[t]) continue;
        const double e = io_value(y[t * ROW_BEATS + d / AV], d % AV) - r;
        err.max_abs = std::fmax(err.max_abs, std::fabs(e));
        se += e * e;
        sr += r * r;
        ++err.checked;
      }
    }
    err.rel_rms = sr > 0 ? std::sqrt(se / sr) : std::sqrt(se);
    const bool out_ok = err.rel_rms <= tol_rms && err.max_abs <= tol_max * err.max_ref &&
                        unexcused == 0 && err.checked > 0;

    // Traffic proof.
    int active = 0;
    bool once = true;
    for (int e = 0; e < E; ++e) {
      active += re.routed[e] > 0;
      once &= re.expert_loads[e] == (re.routed[e] > 0 ? 1u : 0u);
    }
    once &= re.weight_bytes == (uint64_t)active * EXPERT_BYTES && re.gate_bytes == GATE_BYTES;
    bool base_ok = true, same_y = true;
    double base_diff = 0;
    if (!skip_baseline) {
      for (int e = 0; e < E; ++e) base_ok &= ba.expert_loads[e] == ba.routed[e];
      base_ok &= ba.weight_bytes == (uint64_t)n * K * EXPERT_BYTES;
      for (int i = 0; i < n * ROW_BEATS; ++i)
        for (int a = 0; a < AV; ++a)
          base_diff = std::fmax(base_diff, std::fabs(io_value(y[i], a) - io_value(yb[i], a)));
#ifdef M3VIT_FLOAT
      same_y = base_diff <= 1e-5 * std::fmax(err.max_ref, 1e-30);
#else
      same_y = base_diff == 0;
#endif
    }
    const uint64_t base_bytes = skip_baseline ? (uint64_t)n * K * EXPERT_BYTES : ba.weight_bytes;
    const bool pass = out_ok && once && base_ok && same_y;
    all_pass &= pass;

    std::printf("[%s] task %d: rel_rms %.3e max_abs %.3e (max|ref| %.3e), routing mismatches %d "
                "(unexcused %d); active experts %d/%d, weight bytes %llu (baseline %llu, %.1fx)%s "
                "-> %s\n", kBuild, task, err.rel_rms, err.max_abs, err.max_ref, mismatched,
                unexcused, active, E, (unsigned long long)re.weight_bytes,
                (unsigned long long)base_bytes, (double)base_bytes / re.weight_bytes,
                skip_baseline ? " [baseline not run: N*K*block]" : "", pass ? "PASS" : "FAIL");

    js << "    {\"task\": " << task << ", \"pass\": " << (pass ? "true" : "false")
       << ", \"rel_rms_error\": " << err.rel_rms << ", \"max_abs_error\": " << err.max_abs
       << ", \"max_abs_ref\": " << err.max_ref << ", \"checked_values\": " << err.checked
       << ", \"routing_mismatches\": " << mismatched << ", \"unexcused_mismatches\": " << unexcused
       << ",\n     \"active_experts\": " << active << ", \"weight_bytes\": " << re.weight_bytes
       << ", \"gate_bytes\": " << re.gate_bytes << ", \"act_read_bytes\": " << re.act_read_bytes
       << ", \"act_write_bytes\": " << re.act_write_bytes << ", \"tiles\": " << re.tiles
       << ", \"each_active_expert_read_once\": " << (once ? "true" : "false")
       << ",\n     \"expert_loads\": [";
    for (int e = 0; e < E; ++e) js << (e ? ", " : "") << re.expert_loads[e];
    js << "], \"routed\": [";
    for (int e = 0; e < E; ++e) js << (e ? ", " : "") << re.routed[e];
    js << "],\n     \"baseline_run\": " << (skip_baseline ? "false" : "true")
       << ", \"baseline_weight_bytes\": " << base_bytes
       << ", \"baseline_loads_match_routings\": " << (base_ok ? "true" : "false")
       << ", \"baseline_max_abs_diff\": " << base_diff
       << ", \"traffic_ratio\": " << (double)base_bytes / re.weight_bytes << "}"
       << (ti + 1 < check.size() ? "," : "") << "\n";

    if (!dump_dir.empty()) {
      std::string path = dump_dir + "/task" + check[ti] + ".y_out." + kExt + ".bin";
      std::ofstream f(path, std::ios::binary);
      for (int i = 0; i < n * ROW_BEATS; ++i)
        for (int a = 0; a < AV; ++a) {
          uint32_t w = (uint32_t)y[i].range(IOBITS * a + IOBITS - 1, IOBITS * a).to_uint();
          f.write((const char*)&w, 4);
        }
    }
  }
  js << "  ],\n  \"pass\": " << (all_pass ? "true" : "false") << "\n}\n";
  if (!out_path.empty()) {
    std::ofstream f(out_path);
    f << js.str();
  }
  std::printf("%s\n", all_pass ? "ALL PASS" : "FAILED");
  return all_pass ? 0 : 1;
}
