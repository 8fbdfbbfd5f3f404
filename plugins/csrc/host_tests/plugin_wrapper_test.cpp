// Exercises the TensorRT wrappers on the CPU, compiled against TensorRT's public headers
// (no libnvinfer needed): creator -> createPlugin -> output types/shapes -> formats ->
// serialize -> recreate -> clone -> enqueue. enqueue runs the kernel through the host
// shim, so the wrapper's argument plumbing is checked numerically too (the Python test
// compares out.bin with the numpy reference).
#include "../attention/attentionPlugin.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::fprintf(stderr, "CHECK failed at line %d: %s\n", __LINE__, #cond);                                   \
            return 1;                                                                                                  \
        }                                                                                                              \
    } while (0)

static IPluginCreatorV3One* findCreator(char const* name)
{
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), name) == 0)
            return c;
    }
    return nullptr;
}

static PluginTensorDesc desc(std::vector<int64_t> dims, DataType t)
{
    PluginTensorDesc d{};
    d.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
        d.dims.d[i] = dims[i];
    d.type = t;
    d.format = TensorFormat::kLINEAR;
    d.scale = 1.F;
    return d;
}

int main()
{
    int32_t n = 0;
    getCreators(n);
    CHECK(n == 2);
    // Sparse creator: INT attributes arrive as int32 fields, extra parser fields ignored.
    IPluginCreatorV3One* sc = findCreator("VggtSparseAttention");
    CHECK(sc != nullptr && std::strcmp(sc->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(sc->getPluginNamespace(), "vggt_mv") == 0);
    CHECK(sc->getFieldNames()->nbFields == 8);
    float scale = 0.125F;
    int32_t heads = 2, strategy = 1, F = 3, T = 4, N = 2, mem = 0, lmask = 0b110;
    char const version[] = "1";
    std::vector<PluginField> f = {{"scale", &scale, PluginFieldType::kFLOAT32, 1},
        {"num_heads", &heads, PluginFieldType::kINT32, 1}, {"strategy", &strategy, PluginFieldType::kINT32, 1},
        {"frame_len", &F, PluginFieldType::kINT32, 1}, {"num_t", &T, PluginFieldType::kINT32, 1},
        {"num_n", &N, PluginFieldType::kINT32, 1}, {"num_memory", &mem, PluginFieldType::kINT32, 1},
        {"level_mask", &lmask, PluginFieldType::kINT32, 1},
        {"plugin_version", version, PluginFieldType::kCHAR, 1}};
    PluginFieldCollection fc{static_cast<int32_t>(f.size()), f.data()};
    std::unique_ptr<IPluginV3> sp(sc->createPlugin("s0", &fc, TensorRTPhase::kBUILD));
    CHECK(sp != nullptr);
    // A missing attribute or an INT64-typed one is refused (nullptr, logged).
    PluginFieldCollection bad{3, f.data()};
    CHECK(sc->createPlugin("bad", &bad, TensorRTPhase::kBUILD) == nullptr);
    int64_t wide = 3;
    std::vector<PluginField> f64 = f;
    f64[3] = PluginField("frame_len", &wide, PluginFieldType::kINT64, 1);
    PluginFieldCollection fc64{static_cast<int32_t>(f64.size()), f64.data()};
    CHECK(sc->createPlugin("bad64", &fc64, TensorRTPhase::kBUILD) == nullptr);

    auto* build = static_cast<IPluginV3OneBuild*>(sp->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* core = static_cast<IPluginV3OneCore*>(sp->getCapabilityInterface(PluginCapabilityType::kCORE));
    CHECK(build != nullptr && core != nullptr && build->getNbOutputs() == 1);
    CHECK(std::strcmp(core->getPluginName(), "VggtSparseAttention") == 0);
    DataType in_types[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kINT32};
    DataType out_type = DataType::kFLOAT;
    CHECK(build->getOutputDataTypes(&out_type, 1, in_types, 4) == 0 && out_type == DataType::kHALF);
    DimsExprs qe{};
    qe.nbDims = 4;
    DimsExprs ins[4] = {qe, qe, qe, qe};
    DimsExprs outs[1]{};
    CHECK(build->getOutputShapes(ins, 4, nullptr, 0, outs, 1, *static_cast<IExprBuilder*>(nullptr)) == 0);
    CHECK(outs[0].nbDims == 4);

    int64_t const B = 1, H = 2, L = 24, D = 8, M = 1;
    DynamicPluginTensorDesc dyn[5]{};
    dyn[0].desc = desc({B, H, L, D}, DataType::kFLOAT);
    dyn[1].desc = desc({B, H, L, D}, DataType::kFLOAT);
    dyn[2].desc = desc({B, H, L, D}, DataType::kFLOAT);
    dyn[3].desc = desc({B, M}, DataType::kINT32);
    dyn[4].desc = desc({B, H, L, D}, DataType::kFLOAT);
    for (int pos = 0; pos < 5; ++pos)
        CHECK(build->supportsFormatCombination(pos, dyn, 4, 1));
    dyn[4].desc.type = DataType::kHALF;  // output must follow q
    CHECK(!build->supportsFormatCombination(4, dyn, 4, 1));
    dyn[4].desc.type = DataType::kFLOAT;
    dyn[0].desc.format = TensorFormat::kCHW32;
    CHECK(!build->supportsFormatCombination(0, dyn, 4, 1));
    dyn[0].desc.format = TensorFormat::kLINEAR;
    CHECK(build->configurePlugin(dyn, 4, dyn + 4, 1) == 0);
    dyn[0].desc.dims.d[2] = 25;  // L != T*N*F
    CHECK(build->configurePlugin(dyn, 4, dyn + 4, 1) != 0);
    dyn[0].desc.dims.d[2] = L;

    // Serialize -> recreate (runtime phase) -> same fields; clone keeps them too.
    auto* rt = static_cast<IPluginV3OneRuntime*>(sp->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    CHECK(ser->nbFields == 8);
    std::unique_ptr<IPluginV3> again(sc->createPlugin("s1", ser, TensorRTPhase::kRUNTIME));
    CHECK(again != nullptr);
    auto const& p0 = static_cast<vggt::AttentionPlugin*>(sp.get())->params();
    auto const& p1 = static_cast<vggt::AttentionPlugin*>(again.get())->params();
    CHECK(std::memcmp(&p0, &p1, sizeof(p0)) == 0 && p1.level_mask == 0b110 && p1.frame_len == 3);
    std::unique_ptr<IPluginV3> cl(again->clone());
    CHECK(cl != nullptr);
    CHECK(std::memcmp(&static_cast<vggt::AttentionPlugin*>(cl.get())->params(), &p0, sizeof(p0)) == 0);

    // enqueue through the wrapper: read q/k/v (float32 [1,2,24,8]) and write out.bin
    std::vector<float> q(B * H * L * D), o(B * H * L * D);
    FILE* fin = std::fopen("qkv.bin", "rb");
    CHECK(fin != nullptr && std::fread(q.data(), 4, q.size(), fin) == q.size());
    std::fclose(fin);
    int32_t lm[1] = {0};
    PluginTensorDesc in_desc[4] = {dyn[0].desc, dyn[1].desc, dyn[2].desc, dyn[3].desc};
    PluginTensorDesc out_desc[1] = {dyn[4].desc};
    CHECK(rt->onShapeChange(in_desc, 4, out_desc, 1) == 0);
    void const* inputs[4] = {q.data(), q.data(), q.data(), lm};
    void* outputs[1] = {o.data()};
    auto* rt2 = static_cast<IPluginV3OneRuntime*>(cl->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(rt2->enqueue(in_desc, out_desc, inputs, outputs, nullptr, nullptr) == 0);
    FILE* fout = std::fopen("out.bin", "wb");
    CHECK(fout != nullptr && std::fwrite(o.data(), 4, o.size(), fout) == o.size());
    std::fclose(fout);

    // Biased creator: has_bias must be 0/1.
    IPluginCreatorV3One* bc = findCreator("VggtBiasedAttention");
    CHECK(bc != nullptr && bc->getFieldNames()->nbFields == 3);
    int32_t has_bias = 2;
    std::vector<PluginField> bf = {{"scale", &scale, PluginFieldType::kFLOAT32, 1},
        {"num_heads", &heads, PluginFieldType::kINT32, 1}, {"has_bias", &has_bias, PluginFieldType::kINT32, 1}};
    PluginFieldCollection bfc{3, bf.data()};
    CHECK(bc->createPlugin("b", &bfc, TensorRTPhase::kBUILD) == nullptr);
    has_bias = 1;
    std::unique_ptr<IPluginV3> bp(bc->createPlugin("b", &bfc, TensorRTPhase::kBUILD));
    CHECK(bp != nullptr);

    // fp16 enqueue through the biased wrapper: the tensor-core kernel (D = 16 <= 128).
    // q = k = v from qkv16.bin (fp16 [1,2,24,16]), r then c from rc.bin (fp32 [1,24] each).
    int64_t const D16 = 16;
    std::vector<uint16_t> q16(B * H * L * D16), o16(q16.size());
    std::vector<float> rc(2 * L);
    FILE* f16 = std::fopen("qkv16.bin", "rb");
    CHECK(f16 != nullptr && std::fread(q16.data(), 2, q16.size(), f16) == q16.size());
    std::fclose(f16);
    FILE* frc = std::fopen("rc.bin", "rb");
    CHECK(frc != nullptr && std::fread(rc.data(), 4, rc.size(), frc) == rc.size());
    std::fclose(frc);
    PluginTensorDesc bin[5] = {desc({B, H, L, D16}, DataType::kHALF), desc({B, H, L, D16}, DataType::kHALF),
        desc({B, H, L, D16}, DataType::kHALF), desc({B, L}, DataType::kFLOAT), desc({B, L}, DataType::kFLOAT)};
    PluginTensorDesc bout[1] = {desc({B, H, L, D16}, DataType::kHALF)};
    auto* brt = static_cast<IPluginV3OneRuntime*>(bp->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(brt->onShapeChange(bin, 5, bout, 1) == 0);
    void const* binputs[5] = {q16.data(), q16.data(), q16.data(), rc.data(), rc.data() + L};
    void* boutputs[1] = {o16.data()};
    CHECK(brt->enqueue(bin, bout, binputs, boutputs, nullptr, nullptr) == 0);
    FILE* fo16 = std::fopen("out16.bin", "wb");
    CHECK(fo16 != nullptr && std::fwrite(o16.data(), 2, o16.size(), fo16) == o16.size());
    std::fclose(fo16);
    std::puts("plugin wrapper test: OK");
    return 0;
}
