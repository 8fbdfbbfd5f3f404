// Runs the plugin kernels on the CPU (through cuda_host_shim.h) for plugins/tests.
//
// usage: attention_host_test KIND DTYPE B H L S D M SCALE HAS_BIAS STRATEGY F T N MEM LEVEL_MASK DIR [PATH]
// KIND 0 biased / 1 sparse, DTYPE 0 float32 / 1 float16, PATH 0 auto (default) /
// 1 CUDA cores / 2 tensor cores (vggt::KernelPath). DIR holds raw little-endian
// q.bin k.bin v.bin (DTYPE), r.bin c.bin (float32), lm.bin (int32); out.bin is written.
// Also checks the TRT-free parameter rules so a bad case fails here, not silently.
#include "../attention/attention_launch.h"
#include "../common/attention_params.h"
#include "../common/cuda_host_shim.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

static std::vector<char> read_file(const std::string& path, size_t bytes)
{
    std::vector<char> buf(bytes);
    std::ifstream f(path, std::ios::binary);
    if (bytes && !f.read(buf.data(), static_cast<std::streamsize>(bytes)))
    {
        std::fprintf(stderr, "cannot read %zu bytes from %s\n", bytes, path.c_str());
        std::exit(3);
    }
    return buf;
}

int main(int argc, char** argv)
{
    if (argc != 18 && argc != 19)
    {
        std::fprintf(stderr, "usage: %s KIND DTYPE B H L S D M SCALE HAS_BIAS STRATEGY F T N MEM LEVEL_MASK DIR [PATH]\n", argv[0]);
        return 2;
    }
    auto I = [&](int i) { return std::atoi(argv[i]); };
    vggt::AttentionParams p;
    p.kind = I(1) == 0 ? vggt::OpKind::kBiased : vggt::OpKind::kSparse;
    const auto type = I(2) == 0 ? vggt::ElemType::kFloat : vggt::ElemType::kHalf;
    const int B = I(3), H = I(4), L = I(5), S = I(6), D = I(7), M = I(8);
    p.scale = static_cast<float>(std::atof(argv[9]));
    p.num_heads = H;
    p.has_bias = I(10);
    p.strategy = I(11);
    p.frame_len = I(12);
    p.num_t = I(13);
    p.num_n = I(14);
    p.num_memory = I(15);
    p.level_mask = I(16);
    const std::string dir = argv[17];
    const auto path = static_cast<vggt::KernelPath>(argc == 19 ? I(18) : 0);
    std::string err = vggt::validate(p);
    if (err.empty())
    {
        std::vector<std::vector<int64_t>> shapes = {{B, H, L, D}, {B, H, S, D}, {B, H, S, D}};
        if (p.kind == vggt::OpKind::kBiased)
            shapes.insert(shapes.end(), {{B, L}, {B, S}});
        else
            shapes.push_back({B, M});
        err = vggt::check_shapes(p, shapes);
    }
    if (!err.empty())
    {
        std::fprintf(stderr, "invalid problem: %s\n", err.c_str());
        return 4;
    }
    const size_t es = type == vggt::ElemType::kFloat ? 4 : 2;
    auto q = read_file(dir + "/q.bin", size_t(B) * H * L * D * es);
    auto k = read_file(dir + "/k.bin", size_t(B) * H * S * D * es);
    auto v = read_file(dir + "/v.bin", size_t(B) * H * S * D * es);
    std::vector<char> r, c, lm;
    if (p.kind == vggt::OpKind::kBiased)
    {
        r = read_file(dir + "/r.bin", size_t(B) * L * 4);
        c = read_file(dir + "/c.bin", size_t(B) * S * 4);
    }
    else
        lm = read_file(dir + "/lm.bin", size_t(B) * M * 4);
    std::vector<char> out(size_t(B) * H * L * D * es);
    const int rc = vggt::launch_attention(p, type, B, H, L, S, D, M, q.data(), k.data(), v.data(),
        reinterpret_cast<const float*>(r.data()), reinterpret_cast<const float*>(c.data()),
        reinterpret_cast<const int32_t*>(lm.data()), out.data(), nullptr, path);
    if (rc != 0)
    {
        std::fprintf(stderr, "launch_attention failed: %d\n", rc);
        return 5;
    }
    // Shared-memory wavefronts of the warp accesses the shim saw (tensor-core kernel):
    // 1.0 = no bank conflicts.
    std::printf("bank_conflict_factor=%.4f wavefronts=%llu ideal=%llu accesses=%llu\n",
        vggt_host::bank_conflict_factor(), static_cast<unsigned long long>(vggt_host::g_bank.wavefronts.load()),
        static_cast<unsigned long long>(vggt_host::g_bank.ideal.load()),
        static_cast<unsigned long long>(vggt_host::g_bank.accesses.load()));
    std::ofstream f(dir + "/out.bin", std::ios::binary);
    f.write(out.data(), static_cast<std::streamsize>(out.size()));
    return f ? 0 : 6;
}
