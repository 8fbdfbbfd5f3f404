// TRT-free logic of the two plugins: attributes, validation, shape and dtype rules.
//
// The TensorRT wrappers only translate between these functions and TensorRT's types, so
// everything that can be wrong here is tested on the CPU (plugins/tests) without
// TensorRT. Mirrors plugins/contract.json (contract 1.1.0).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace vggt
{

enum class OpKind : int32_t { kBiased = 0, kSparse = 1 };
enum class ElemType : int32_t { kFloat = 0, kHalf = 1, kInt32 = 2, kOther = 3 };

constexpr int32_t kStrategyLandmark = 0;
constexpr int32_t kStrategyDilated = 1;
constexpr int32_t kStrategyMemoryBank = 2;
constexpr int32_t kMaxHeadDim = 256;
constexpr int32_t kTensorCoreMaxHeadDim = 128;

// Which kernel runs: kAuto picks the tensor-core one whenever it applies; the others are
// for tests and for comparing the two on a GPU.
enum class KernelPath : int32_t { kAuto = 0, kCudaCores = 1, kTensorCores = 2 };

// Tensor cores take fp16 operands: fp32 engines keep exact fp32 maths on CUDA cores
// (TF32 would silently change their numerics), and head sizes above 128 do not fit the
// tensor-core kernel's shared-memory tiles.
inline bool tensor_cores_apply(ElemType type, int32_t head_dim)
{
    return type == ElemType::kHalf && head_dim >= 8 && head_dim <= kTensorCoreMaxHeadDim && head_dim % 8 == 0;
}

struct AttentionParams
{
    OpKind kind = OpKind::kBiased;
    float scale = 0.F;
    int32_t num_heads = 0;
    int32_t has_bias = 0;   // biased op
    int32_t strategy = 0;   // sparse op from here on
    int32_t frame_len = 0;
    int32_t num_t = 0;
    int32_t num_n = 0;
    int32_t num_memory = 0;
    int32_t level_mask = 0;
};

// A plugin field as TensorRT hands it over, without TensorRT's types.
enum class FieldType : int32_t { kFloat32 = 0, kInt32 = 1, kChar = 2, kOther = 3 };
struct FieldView
{
    const char* name;
    FieldType type;
    const void* data;
    int32_t length;
};

inline const char* op_name(OpKind k)
{
    return k == OpKind::kBiased ? "VggtBiasedAttention" : "VggtSparseAttention";
}

// Names of the attributes each op reads (what the creator advertises and serializes).
inline std::vector<std::pair<const char*, FieldType>> field_names(OpKind k)
{
    if (k == OpKind::kBiased)
        return {{"scale", FieldType::kFloat32}, {"num_heads", FieldType::kInt32}, {"has_bias", FieldType::kInt32}};
    return {{"scale", FieldType::kFloat32}, {"num_heads", FieldType::kInt32}, {"strategy", FieldType::kInt32},
        {"frame_len", FieldType::kInt32}, {"num_t", FieldType::kInt32}, {"num_n", FieldType::kInt32},
        {"num_memory", FieldType::kInt32}, {"level_mask", FieldType::kInt32}};
}

inline int32_t* int_slot(AttentionParams& p, const char* name)
{
    if (std::strcmp(name, "num_heads") == 0)
        return &p.num_heads;
    if (std::strcmp(name, "has_bias") == 0)
        return &p.has_bias;
    if (std::strcmp(name, "strategy") == 0)
        return &p.strategy;
    if (std::strcmp(name, "frame_len") == 0)
        return &p.frame_len;
    if (std::strcmp(name, "num_t") == 0)
        return &p.num_t;
    if (std::strcmp(name, "num_n") == 0)
        return &p.num_n;
    if (std::strcmp(name, "num_memory") == 0)
        return &p.num_memory;
    if (std::strcmp(name, "level_mask") == 0)
        return &p.level_mask;
    return nullptr;
}

// Checks the values (not the shapes). Empty string == valid.
inline std::string validate(const AttentionParams& p)
{
    if (!(p.scale > 0.F))
        return "scale must be > 0";
    if (p.num_heads < 1)
        return "num_heads must be >= 1";
    if (p.kind == OpKind::kBiased)
        return (p.has_bias == 0 || p.has_bias == 1) ? "" : "has_bias must be 0 or 1";
    if (p.strategy < kStrategyLandmark || p.strategy > kStrategyMemoryBank)
        return "strategy must be 0 (landmark), 1 (dilated) or 2 (memory_bank)";
    if (p.frame_len < 1 || p.num_t < 1 || p.num_n < 1)
        return "frame_len, num_t and num_n must be >= 1";
    if (p.num_memory < 0 || (p.num_memory > 0 && p.strategy != kStrategyMemoryBank))
        return "num_memory must be 0 unless strategy is memory_bank";
    if (p.level_mask < 0 || (p.level_mask & 1))
        return "level_mask must be a non-negative bit mask without bit 0";
    return "";
}

// Fields -> params. Unknown fields (e.g. plugin_version forwarded by a parser) are
// ignored; a missing or mistyped required field is an error naming it.
inline std::string parse_fields(OpKind kind, const FieldView* fields, int32_t n, AttentionParams& out)
{
    AttentionParams p;
    p.kind = kind;
    for (const auto& [name, type] : field_names(kind))
    {
        const FieldView* f = nullptr;
        for (int32_t i = 0; i < n; ++i)
            if (fields[i].name != nullptr && std::strcmp(fields[i].name, name) == 0)
                f = &fields[i];
        if (f == nullptr)
            return std::string("missing attribute '") + name + "'";
        if (f->type != type || f->length != 1 || f->data == nullptr)
            return std::string("attribute '") + name + "' must be one " + (type == FieldType::kFloat32 ? "float32" : "int32");
        if (type == FieldType::kFloat32)
            std::memcpy(&p.scale, f->data, sizeof(float));
        else
            std::memcpy(int_slot(p, name), f->data, sizeof(int32_t));
    }
    std::string err = validate(p);
    if (err.empty())
        out = p;
    return err;
}

// Params -> fields pointing into `p` (valid while p lives): what gets serialized.
inline std::vector<FieldView> to_fields(AttentionParams& p)
{
    std::vector<FieldView> out;
    for (const auto& [name, type] : field_names(p.kind))
    {
        const void* data = type == FieldType::kFloat32 ? static_cast<const void*>(&p.scale)
                                                       : static_cast<const void*>(int_slot(p, name));
        out.push_back({name, type, data, 1});
    }
    return out;
}

inline int32_t num_inputs(OpKind k)
{
    return k == OpKind::kBiased ? 5 : 4;
}

// Shape rules on static dims (-1 = unknown at build time, accepted). Output == q's shape.
inline std::string check_shapes(const AttentionParams& p, const std::vector<std::vector<int64_t>>& in)
{
    if (static_cast<int32_t>(in.size()) != num_inputs(p.kind))
        return std::string(op_name(p.kind)) + " takes " + std::to_string(num_inputs(p.kind)) + " inputs";
    for (int i = 0; i < 3; ++i)
        if (in[i].size() != 4)
            return "q, k and v must be 4-D [B, H, L, D]";
    auto eq = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; };
    const auto &q = in[0], &k = in[1], &v = in[2];
    if (!eq(q[0], k[0]) || !eq(q[0], v[0]) || !eq(q[1], k[1]) || !eq(q[1], v[1]))
        return "q, k and v must share B and H";
    if (!eq(k[2], v[2]) || !eq(q[3], k[3]) || !eq(q[3], v[3]))
        return "k and v must have the same length, and q, k, v the same head size";
    if (q[1] >= 0 && q[1] != p.num_heads)
        return "num_heads attribute does not match q.shape[1]";
    if (q[3] >= 0 && (q[3] % 8 != 0 || q[3] > kMaxHeadDim || q[3] < 8))
        return "head size must be a multiple of 8 in [8, 256]";
    if (p.kind == OpKind::kBiased)
    {
        if (in[3].size() != 2 || in[4].size() != 2)
            return "r and c must be 2-D [B, L] and [B, S]";
        if (!eq(in[3][0], q[0]) || !eq(in[3][1], q[2]) || !eq(in[4][0], q[0]) || !eq(in[4][1], k[2]))
            return "r must be [B, L] and c [B, S]";
        return "";
    }
    if (!eq(q[2], k[2]))
        return "sparse attention is self-attention: q and k must have the same length";
    const int64_t want = int64_t{p.num_t} * p.num_n * p.frame_len + p.num_memory;
    if (q[2] >= 0 && q[2] != want)
        return "L must equal num_t * num_n * frame_len + num_memory (" + std::to_string(want) + ")";
    if (in[3].size() != 2 || !eq(in[3][0], q[0]))
        return "landmarks must be 2-D [B, M]";
    return "";
}

// Supported type/format combinations: q/k/v/out fp32 or fp16 (all the same), r/c fp32,
// landmarks int32; everything linear (row-major). `types` holds all inputs then output.
inline bool supports_types(OpKind kind, int32_t pos, const ElemType* types)
{
    const int32_t nin = num_inputs(kind);
    const ElemType t = types[pos];
    if (pos == 0)
        return t == ElemType::kFloat || t == ElemType::kHalf;
    if (pos == 1 || pos == 2 || pos == nin)
        return t == types[0];
    if (kind == OpKind::kBiased)
        return t == ElemType::kFloat;
    return t == ElemType::kInt32;
}

} // namespace vggt
