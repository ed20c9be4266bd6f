// kgen-anchors: kgen's seven H100 anchor shapes (kgen/tools/suites.py, h100-anchors) through ggml's
// Vulkan backend, kgen on and off in one process: GGML_VK_KGEN is flipped between graph computes
// (ggml-vulkan-kgen.inc reads it on every FLASH_ATTN_EXT call), so both sides share one device,
// one set of inputs and the same machine state.
//
//   kgen-anchors [--case NAME]... [--repeats 20] [--warmup 3] [--prec default|f32] [--small] [--json FILE]
//
// GGML_BACKEND names the device (default Vulkan0; lavapipe needs GGML_VK_VISIBLE_DEVICES=0).
// stdout: one markdown table. stderr: progress, and the glue's GGML_VK_KGEN_LOG=1 lines (set here
// unless the environment sets it): which kernel served each shape, or why ggml's shaders did.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Case {
    const char *id, *name;
    int64_t hkv, gqa, nq, nkv, dk, dv;
    ggml_type kv_type;
    bool mask, mla;   // mla: V is a view of K's first Dv columns (DeepSeek, as llama.cpp builds it)
};

const Case kCases[] = {
    {"P1", "P1 prefill 128", 32, 1, 512, 16384, 128, 128, GGML_TYPE_F16, false, false},
    {"P2", "P2 prefill MLA", 1, 16, 512, 16384, 576, 512, GGML_TYPE_F16, true, true},
    {"P3", "P3 decode 128", 8, 4, 1, 16384, 128, 128, GGML_TYPE_F16, true, false},
    {"P4", "P4 decode MLA", 1, 16, 1, 16384, 576, 512, GGML_TYPE_F16, false, true},
    {"P5", "P5 prefill q8_0", 8, 4, 512, 16384, 128, 128, GGML_TYPE_Q8_0, true, false},
    {"L1", "prefill 128 Nkv 4096", 32, 1, 512, 4096, 128, 128, GGML_TYPE_F16, false, false},
    {"L2", "prefill 256 GQA 16", 2, 16, 512, 20000, 256, 256, GGML_TYPE_F16, true, false},
};

struct Options {
    std::vector<std::string> only;
    int repeats = 20, warmup = 3;
    ggml_prec prec = GGML_PREC_DEFAULT;
    bool small = false;
    std::string json;
};

struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

[[noreturn]] void usage_error(const std::string &what) {
    fprintf(stderr, "kgen-anchors: %s\n(kgen-anchors --help for the options)\n", what.c_str());
    exit(2);
}

void print_help() {
    printf("usage: kgen-anchors [--case NAME]... [--repeats R] [--warmup W] [--prec default|f32] [--small] [--json FILE]\n"
           "  --case NAME   only cases whose id or name contains NAME (case-insensitive; repeatable)\n"
           "  --repeats R   timed graph computes per side (default 20)\n"
           "  --warmup W    untimed graph computes per side first (default 3)\n"
           "  --prec P      ggml_flash_attn_ext_set_prec: default (GGML_PREC_DEFAULT) or f32\n"
           "  --small       Nkv / 16 and Hkv / min(Hkv, 4): the same problem kinds, for lavapipe\n"
           "  --json FILE   also write the results, every repeat's times included, as JSON\n"
           "env: GGML_BACKEND (default Vulkan0), GGML_VK_VISIBLE_DEVICES=0 for lavapipe\n"
           "cases:");
    for (const Case &c : kCases) printf(" %s (%s);", c.id, c.name);
    printf("\n");
}

int int_at_least(const char *flag, const char *v, long least) {
    char *end = nullptr;
    const long n = strtol(v, &end, 10);
    if (end == v || *end != '\0' || n < least || n > 1000000)
        usage_error(std::string(flag) + " " + v + ": an integer >= " + std::to_string(least));
    return (int)n;
}

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> const char * {
            if (i + 1 >= argc) usage_error(a + " needs a value");
            return argv[++i];
        };
        if (a == "--help" || a == "-h") { print_help(); exit(0); }
        else if (a == "--case") o.only.push_back(value());
        else if (a == "--repeats") o.repeats = int_at_least("--repeats", value(), 1);
        else if (a == "--warmup") o.warmup = int_at_least("--warmup", value(), 0);
        else if (a == "--small") o.small = true;
        else if (a == "--json") o.json = value();
        else if (a == "--prec") {
            const std::string p = value();
            if (p == "f32") o.prec = GGML_PREC_F32;
            else if (p == "default") o.prec = GGML_PREC_DEFAULT;
            else usage_error("--prec " + p + ": default or f32");
        } else usage_error("unknown argument " + a);
    }
    return o;
}

std::string lower(std::string s) {
    for (char &ch : s) ch = (char)tolower((unsigned char)ch);
    return s;
}

std::vector<Case> pick(const Options &o) {
    std::vector<bool> on(sizeof kCases / sizeof kCases[0], o.only.empty());
    for (const std::string &want : o.only) {
        bool any = false;
        for (size_t i = 0; i < on.size(); ++i) {
            const std::string hay = lower(std::string(kCases[i].id) + " " + kCases[i].name);
            if (hay.find(lower(want)) != std::string::npos) on[i] = any = true;
        }
        if (!any) {
            std::string known;
            for (const Case &c : kCases) known += std::string(known.empty() ? "" : ", ") + c.id + " (" + c.name + ")";
            usage_error("--case " + want + ": no case matches; the cases: " + known);
        }
    }
    std::vector<Case> out;
    for (size_t i = 0; i < on.size(); ++i) {
        if (!on[i]) continue;
        Case c = kCases[i];
        if (o.small) {
            c.nkv = std::max<int64_t>(c.nkv / 16, 1);
            c.hkv /= std::min<int64_t>(c.hkv, 4);
        }
        out.push_back(c);
    }
    return out;
}

std::string label(const Case &c) {
    return strncmp(c.name, c.id, strlen(c.id)) == 0 ? c.name : std::string(c.id) + " " + c.name;
}

std::string shape(const Case &c) {
    char s[200];
    snprintf(s, sizeof s, "Hq %lld, Hkv %lld, Nq %lld, Nkv %lld, D %lld/%lld, %s%s%s", (long long)(c.hkv * c.gqa),
             (long long)c.hkv, (long long)c.nq, (long long)c.nkv, (long long)c.dk, (long long)c.dv,
             ggml_type_name(c.kv_type), c.mask ? ", mask" : "", c.mla ? ", MLA" : "");
    return s;
}

double flops(const Case &c) {   // ggml's convention: the two matmuls
    return 2.0 * (double)(c.hkv * c.gqa) * (double)c.nq * (double)c.nkv * (double)(c.dk + c.dv);
}

// Deterministic uniform floats (splitmix64), the same on every platform and fast enough for 67M values.
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed) {}
    float uniform(float lo, float hi) {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        return lo + (hi - lo) * (float)((double)(z >> 40) / (double)(1ull << 24));
    }
};

// Uniform values in [lo, hi], stored as t's type: f32, f16, or (q8_0) ggml's own quantizer on
// the f32 values, row by row (ne[0] per row), so the blocks are what llama.cpp would store.
void upload_uniform(ggml_tensor *t, Rng &rng, float lo, float hi) {
    const int64_t n = ggml_nelements(t);
    std::vector<float> f(n);
    for (float &x : f) x = rng.uniform(lo, hi);
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_set(t, f.data(), 0, ggml_nbytes(t));
    } else if (t->type == GGML_TYPE_F16) {
        std::vector<ggml_fp16_t> h(n);
        ggml_fp32_to_fp16_row(f.data(), h.data(), n);
        ggml_backend_tensor_set(t, h.data(), 0, ggml_nbytes(t));
    } else {
        std::vector<uint8_t> q(ggml_nbytes(t));
        ggml_quantize_chunk(t->type, f.data(), q.data(), 0, n / t->ne[0], t->ne[0], nullptr);
        ggml_backend_tensor_set(t, q.data(), 0, q.size());
    }
}

bool set_kgen(bool on) { return setenv("GGML_VK_KGEN", on ? "1" : "0", 1) == 0; }

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The inputs of one case, on the device.
struct Inputs {
    ggml_context *ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_tensor *q = nullptr, *k = nullptr, *v = nullptr, *mask = nullptr;
    ~Inputs() {
        if (buf) ggml_backend_buffer_free(buf);
        if (ctx) ggml_free(ctx);
    }
};

// N independent FA nodes over the same inputs, each with its own dst: one graph compute then
// amortizes the submission and synchronization over N calls (test-backend-ops' perf mode).
struct Graph {
    int n = 0;
    ggml_context *ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_cgraph *graph = nullptr;
    std::vector<ggml_tensor *> dst;
    ~Graph() {
        if (buf) ggml_backend_buffer_free(buf);
        if (ctx) ggml_free(ctx);
    }
};

// A case's inputs depend only on the case (its id seeds them), not on which others run.
void make_inputs(Inputs &in, const Case &c, ggml_backend_t backend) {
    ggml_init_params p = {ggml_tensor_overhead() * 8, nullptr, true};
    in.ctx = ggml_init(p);
    if (!in.ctx) throw Failure("ggml_init failed");
    const int64_t hq = c.hkv * c.gqa;
    in.q = ggml_new_tensor_4d(in.ctx, GGML_TYPE_F32, c.dk, c.nq, hq, 1);
    in.k = ggml_new_tensor_4d(in.ctx, c.kv_type, c.dk, c.nkv, c.hkv, 1);
    in.v = c.mla ? ggml_view_4d(in.ctx, in.k, c.dv, c.nkv, c.hkv, 1, in.k->nb[1], in.k->nb[2], in.k->nb[3], 0)
                 : ggml_new_tensor_4d(in.ctx, c.kv_type, c.dv, c.nkv, c.hkv, 1);
    // (Nkv, Nq, 1, 1): this ggml revision has no GGML_KQ_MASK_PAD; test-backend-ops uses Nq rows too.
    if (c.mask) in.mask = ggml_new_tensor_4d(in.ctx, GGML_TYPE_F16, c.nkv, c.nq, 1, 1);
    in.buf = ggml_backend_alloc_ctx_tensors(in.ctx, backend);
    if (!in.buf) throw Failure("could not allocate the inputs on the device");
    uint64_t seed = 0x6b67656eull;
    for (const char *p = c.id; *p; ++p) seed = seed * 131u + (unsigned char)*p;
    Rng rng(seed);
    upload_uniform(in.q, rng, -1.0f, 1.0f);
    upload_uniform(in.k, rng, -1.0f, 1.0f);
    if (!c.mla) upload_uniform(in.v, rng, -1.0f, 1.0f);
    if (in.mask) upload_uniform(in.mask, rng, -1.0f, 0.0f);
}

void make_graph(Graph &g, const Inputs &in, const Case &c, const Options &o, ggml_backend_t backend, int n) {
    const size_t graph_size = (size_t)n + 16;
    ggml_init_params p = {ggml_tensor_overhead() * ((size_t)n + 4) + ggml_graph_overhead_custom(graph_size, false),
                          nullptr, true};
    g.n = n;
    g.ctx = ggml_init(p);
    if (!g.ctx) throw Failure("ggml_init failed");
    g.graph = ggml_new_graph_custom(g.ctx, graph_size, false);
    for (int i = 0; i < n; ++i) {
        ggml_tensor *out = ggml_flash_attn_ext(g.ctx, in.q, in.k, in.v, in.mask, 1.0f / sqrtf((float)c.dk), 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(out, o.prec);
        if (i == 0 && !ggml_backend_supports_op(backend, out))
            throw Failure(std::string(ggml_backend_name(backend)) + " does not support this FLASH_ATTN_EXT");
        ggml_build_forward_expand(g.graph, out);
        g.dst.push_back(out);
    }
    g.buf = ggml_backend_alloc_ctx_tensors(g.ctx, backend);
    if (!g.buf) throw Failure("could not allocate " + std::to_string(n) + " outputs on the device");
}

// Seconds for one synchronous graph compute on the given side.
double compute(ggml_backend_t backend, Graph &g, bool kgen) {
    if (!set_kgen(kgen)) throw Failure("setenv GGML_VK_KGEN failed");
    const double t0 = now_s();
    const ggml_status s = ggml_backend_graph_compute(backend, g.graph);
    const double t1 = now_s();
    if (s != GGML_STATUS_SUCCESS)
        throw Failure(std::string("ggml_backend_graph_compute (kgen ") + (kgen ? "on" : "off") + "): " + ggml_status_to_string(s));
    return t1 - t0;
}

std::vector<float> read(const ggml_tensor *t) {
    std::vector<float> out(ggml_nelements(t));
    ggml_backend_tensor_get(t, out.data(), 0, ggml_nbytes(t));
    return out;
}

size_t first_non_finite(const std::vector<float> &x) {
    for (size_t i = 0; i < x.size(); ++i)
        if (!std::isfinite(x[i])) return i;
    return x.size();
}

double median(std::vector<double> x) {
    std::sort(x.begin(), x.end());
    const size_t m = x.size() / 2;
    return x.size() % 2 ? x[m] : 0.5 * (x[m - 1] + x[m]);
}

struct Result {
    Case c;
    int n = 0;
    double nmse = 0, ggml_us = 0, kgen_us = 0;
    std::vector<double> ggml_times, kgen_times;   // per-call microseconds, one per repeat
};

constexpr double kTargetS = 0.020;   // one graph compute at least this long
// kgen's descriptor pools hold 4096 sets per graph compute (64 pools of 64; ggml-vulkan gives it no
// push descriptors) and a node takes up to a few: more nodes would fall back to ggml's shaders.
constexpr int kMaxNodes = 1024;

Result run_case(const Case &c, const Options &o, ggml_backend_t backend) {
    Result r;
    r.c = c;
    Inputs in;
    make_inputs(in, c, backend);

    // Correctness, and the first computes (pipeline creation) out of the timing.
    int n = 1;
    auto g = std::make_unique<Graph>();
    make_graph(*g, in, c, o, backend, n);
    compute(backend, *g, true);
    const std::vector<float> a = read(g->dst[0]);
    compute(backend, *g, false);
    const std::vector<float> b = read(g->dst[0]);
    for (int side = 0; side < 2; ++side) {
        const std::vector<float> &x = side == 0 ? a : b;
        const size_t bad = first_non_finite(x);
        if (bad != x.size())
            throw Failure(std::string(side == 0 ? "kgen" : "ggml") + "'s output has a NaN/Inf (element " +
                          std::to_string(bad) + " of " + std::to_string(x.size()) + ")");
    }
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    r.nmse = num / den;
    if (!std::isfinite(r.nmse)) throw Failure("NMSE kgen vs ggml is not finite (ggml's output is all zero?)");

    // N: scaled from the faster side's time until one compute takes kTargetS (the first estimate
    // includes the submission overhead N is meant to amortize, hence a few rounds).
    const int64_t dst_bytes = (int64_t)ggml_nbytes(g->dst[0]);
    size_t free_mem = 0, total_mem = 0;
    ggml_backend_dev_memory(ggml_backend_get_device(backend), &free_mem, &total_mem);
    const int64_t mem_cap = free_mem ? (int64_t)(free_mem / 4) / std::max<int64_t>(dst_bytes, 1) : kMaxNodes;
    const int cap = (int)std::max<int64_t>(1, std::min<int64_t>(kMaxNodes, mem_cap));
    for (int round = 0; round < 4; ++round) {
        const double t = std::min(compute(backend, *g, true), compute(backend, *g, false));
        if (t >= kTargetS || n >= cap) break;
        const int next = (int)std::min<double>(cap, std::ceil(n * kTargetS * 1.2 / std::max(t, 1e-6)));
        if (next <= n) break;
        n = next;
        g.reset();
        g = std::make_unique<Graph>();
        make_graph(*g, in, c, o, backend, n);
    }
    r.n = n;

    for (int i = 0; i < o.warmup; ++i) {
        compute(backend, *g, true);
        compute(backend, *g, false);
    }
    for (int i = 0; i < o.repeats; ++i) {   // alternating, so both sides see the same clocks and heat
        r.kgen_times.push_back(compute(backend, *g, true) / n * 1e6);
        r.ggml_times.push_back(compute(backend, *g, false) / n * 1e6);
    }
    r.kgen_us = median(r.kgen_times);
    r.ggml_us = median(r.ggml_times);
    return r;
}

std::string json_string(const std::string &s) {
    std::string out = "\"";
    for (char ch : s) {
        if (ch == '"' || ch == '\\') { out += '\\'; out += ch; }
        else if ((unsigned char)ch < 0x20) { char e[8]; snprintf(e, sizeof e, "\\u%04x", ch); out += e; }
        else out += ch;
    }
    return out + "\"";
}

std::string json_list(const std::vector<double> &x) {
    std::string out = "[";
    char num[32];
    for (size_t i = 0; i < x.size(); ++i) {
        snprintf(num, sizeof num, "%s%.3f", i ? ", " : "", x[i]);
        out += num;
    }
    return out + "]";
}

void write_json(const std::string &path, const std::vector<Result> &results, const Options &o,
                const std::string &backend, const std::string &device) {
    FILE *f = fopen(path.c_str(), "w");
    if (!f) throw Failure("--json " + path + ": cannot write: " + strerror(errno));
    fprintf(f, "{\n  \"backend\": %s,\n  \"device\": %s,\n  \"precision\": \"%s\",\n  \"small\": %s,\n"
               "  \"repeats\": %d,\n  \"warmup\": %d,\n  \"cases\": [",
            json_string(backend).c_str(), json_string(device).c_str(), o.prec == GGML_PREC_F32 ? "f32" : "default",
            o.small ? "true" : "false", o.repeats, o.warmup);
    for (size_t i = 0; i < results.size(); ++i) {
        const Result &r = results[i];
        const Case &c = r.c;
        fprintf(f, "%s\n    {\"id\": %s, \"name\": %s, \"shape\": %s,\n"
                   "     \"heads_kv\": %lld, \"gqa\": %lld, \"heads_q\": %lld, \"n_q\": %lld, \"n_kv\": %lld,"
                   " \"head_k\": %lld, \"head_v\": %lld, \"kv_type\": \"%s\", \"mask\": %s, \"mla\": %s,\n"
                   "     \"flops\": %.0f, \"n\": %d, \"ggml_us\": %.3f, \"kgen_us\": %.3f, \"speedup\": %.4f,"
                   " \"kgen_tflops\": %.4f, \"ggml_tflops\": %.4f, \"nmse\": %.6e,\n"
                   "     \"ggml_times_us\": %s,\n     \"kgen_times_us\": %s}",
                i ? "," : "", json_string(c.id).c_str(), json_string(c.name).c_str(), json_string(shape(c)).c_str(),
                (long long)c.hkv, (long long)c.gqa, (long long)(c.hkv * c.gqa), (long long)c.nq, (long long)c.nkv,
                (long long)c.dk, (long long)c.dv, ggml_type_name(c.kv_type), c.mask ? "true" : "false",
                c.mla ? "true" : "false", flops(c), r.n, r.ggml_us, r.kgen_us, r.ggml_us / r.kgen_us,
                flops(c) / (r.kgen_us * 1e6), flops(c) / (r.ggml_us * 1e6), r.nmse,
                json_list(r.ggml_times).c_str(), json_list(r.kgen_times).c_str());
    }
    fprintf(f, "\n  ]\n}\n");
    if (fclose(f) != 0) throw Failure("--json " + path + ": write failed");
}

std::string known_devices() {
    std::string out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        out += std::string(out.empty() ? "" : ", ") + ggml_backend_dev_name(d) + " (" + ggml_backend_dev_description(d) + ")";
    }
    return out.empty() ? "none" : out;
}

}  // namespace

int main(int argc, char **argv) {
    const Options o = parse(argc, argv);
    const std::vector<Case> cases = pick(o);
    // The glue's outcome lines (served by which kernel, or the fallback's reason) and its counts at
    // exit, on stderr; level 2 would print on stdout, into the table.
    setenv("GGML_VK_KGEN_LOG", "1", 0);

    const char *name = getenv("GGML_BACKEND");
    const std::string want = name && *name ? name : "Vulkan0";
    ggml_backend_dev_t dev = ggml_backend_dev_by_name(want.c_str());
    if (!dev) {
        fprintf(stderr, "kgen-anchors: no ggml device %s (GGML_BACKEND); devices: %s\n"
                        "(ggml-vulkan skips CPU devices such as lavapipe unless GGML_VK_VISIBLE_DEVICES names them)\n",
                want.c_str(), known_devices().c_str());
        return 2;
    }
    const std::string reg = ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev));
    if (reg != "Vulkan") {
        fprintf(stderr, "kgen-anchors: %s is a %s device, not Vulkan: kgen runs only inside ggml-vulkan\n", want.c_str(), reg.c_str());
        return 2;
    }
    ggml_backend_t backend = ggml_backend_dev_init(dev, nullptr);
    if (!backend) {
        fprintf(stderr, "kgen-anchors: could not initialize %s\n", want.c_str());
        return 2;
    }
    const std::string device = ggml_backend_dev_description(dev);
    fprintf(stderr, "kgen-anchors: %s (%s), precision %s, %d repeats after %d warm-up computes per side%s\n",
            want.c_str(), device.c_str(), o.prec == GGML_PREC_F32 ? "f32" : "default", o.repeats, o.warmup,
            o.small ? ", --small" : "");

    std::vector<Result> results;
    int status = 0;
    try {
        for (size_t i = 0; i < cases.size(); ++i) {
            fprintf(stderr, "kgen-anchors: %s: %s\n", label(cases[i]).c_str(), shape(cases[i]).c_str());
            try {
                results.push_back(run_case(cases[i], o, backend));
            } catch (const Failure &e) {
                throw Failure(label(cases[i]) + ": " + e.what());
            }
            const Result &r = results.back();
            fprintf(stderr, "kgen-anchors:   N %d, ggml %.1f us, kgen %.1f us, NMSE %.2e\n", r.n, r.ggml_us, r.kgen_us, r.nmse);
        }
    } catch (const Failure &e) {
        fprintf(stderr, "kgen-anchors: FAILED: %s\n", e.what());
        status = 1;
    }

    if (!results.empty()) {
        printf("| case | shape | ggml us | kgen us | ggml/kgen | kgen TFLOPS | NMSE kgen vs ggml |\n");
        printf("|---|---|---|---|---|---|---|\n");
        for (const Result &r : results) {
            printf("| %s | %s | %.1f | %.1f | %.2fx | %.3g | %.2e |\n", label(r.c).c_str(), shape(r.c).c_str(), r.ggml_us,
                   r.kgen_us, r.ggml_us / r.kgen_us, flops(r.c) / (r.kgen_us * 1e6), r.nmse);
        }
        fflush(stdout);
    }
    if (!o.json.empty()) {
        try {
            write_json(o.json, results, o, want, device);
        } catch (const Failure &e) {
            fprintf(stderr, "kgen-anchors: %s\n", e.what());
            status = 1;
        }
    }
    ggml_backend_free(backend);
    return status;
}
