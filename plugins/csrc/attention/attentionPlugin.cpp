#include "attentionPlugin.h"

#include "attention_launch.h"

#include <exception>

using namespace nvinfer1;

namespace vggt
{
namespace
{
ElemType toElem(DataType t) noexcept
{
    switch (t)
    {
    case DataType::kFLOAT: return ElemType::kFloat;
    case DataType::kHALF: return ElemType::kHalf;
    case DataType::kINT32: return ElemType::kInt32;
    default: return ElemType::kOther;
    }
}

FieldType toFieldType(PluginFieldType t) noexcept
{
    switch (t)
    {
    case PluginFieldType::kFLOAT32: return FieldType::kFloat32;
    case PluginFieldType::kINT32: return FieldType::kInt32;
    case PluginFieldType::kCHAR: return FieldType::kChar;
    default: return FieldType::kOther;
    }
}

PluginFieldType fromFieldType(FieldType t) noexcept
{
    return t == FieldType::kFloat32 ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32;
}

std::vector<int64_t> dimsOf(Dims const& d)
{
    return std::vector<int64_t>(d.d, d.d + d.nbDims);
}
} // namespace

AttentionPlugin::AttentionPlugin(AttentionParams const& params)
    : mParams(params)
{
}

IPluginCapability* AttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* AttentionPlugin::clone() noexcept
{
    try
    {
        return new AttentionPlugin(mParams);
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

char const* AttentionPlugin::getPluginName() const noexcept
{
    return op_name(mParams.kind);
}

char const* AttentionPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* AttentionPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

int32_t AttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbOutputs != 1)
        return -1;
    std::vector<std::vector<int64_t>> shapes;
    for (int32_t i = 0; i < nbInputs; ++i)
        shapes.push_back(dimsOf(in[i].desc.dims));
    std::string const err = check_shapes(mParams, shapes);
    if (!err.empty())
    {
        logError(std::string(op_name(mParams.kind)) + ": " + err);
        return -1;
    }
    return 0;
}

int32_t AttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != num_inputs(mParams.kind))
        return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t AttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbOutputs != 1 || nbInputs != num_inputs(mParams.kind) || inputs[0].nbDims != 4)
        return -1;
    outputs[0] = inputs[0];  // out has q's shape
    return 0;
}

bool AttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut[pos].desc.format != TensorFormat::kLINEAR)
        return false;
    ElemType types[8];
    for (int32_t i = 0; i < nbInputs + nbOutputs && i < 8; ++i)
        types[i] = toElem(inOut[i].desc.type);
    return supports_types(mParams.kind, pos, types);
}

int32_t AttentionPlugin::getNbOutputs() const noexcept
{
    return 1;
}

size_t AttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;  // statistics live in registers: no L x S (or any) scratch buffer
}

int32_t AttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    std::vector<std::vector<int64_t>> shapes;
    for (int32_t i = 0; i < nbInputs; ++i)
        shapes.push_back(dimsOf(in[i].dims));
    std::string const err = check_shapes(mParams, shapes);
    if (!err.empty())
    {
        logError(std::string(op_name(mParams.kind)) + ": " + err);
        return -1;
    }
    return 0;
}

int32_t AttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    Dims const& q = inputDesc[0].dims;
    int const B = static_cast<int>(q.d[0]), H = static_cast<int>(q.d[1]);
    int const L = static_cast<int>(q.d[2]), D = static_cast<int>(q.d[3]);
    int const S = static_cast<int>(inputDesc[1].dims.d[2]);
    bool const biased = mParams.kind == OpKind::kBiased;
    int const M = biased ? 0 : static_cast<int>(inputDesc[3].dims.d[1]);
    return launch_attention(mParams, toElem(inputDesc[0].type), B, H, L, S, D, M, inputs[0], inputs[1], inputs[2],
        biased ? static_cast<float const*>(inputs[3]) : nullptr, biased ? static_cast<float const*>(inputs[4]) : nullptr,
        biased ? nullptr : static_cast<int32_t const*>(inputs[3]), outputs[0], stream);
}

IPluginV3* AttentionPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* AttentionPlugin::getFieldsToSerialize() noexcept
{
    mFields.clear();
    for (FieldView const& f : to_fields(mParams))
        mFields.emplace_back(f.name, f.data, fromFieldType(f.type), f.length);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    return &mFieldCollection;
}

AttentionPluginCreator::AttentionPluginCreator(OpKind kind)
    : mKind(kind)
{
    for (auto const& [name, type] : field_names(kind))
        mFieldNames.emplace_back(name, nullptr, fromFieldType(type), 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* AttentionPluginCreator::getPluginName() const noexcept
{
    return op_name(mKind);
}

char const* AttentionPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* AttentionPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* AttentionPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* AttentionPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        std::vector<FieldView> fields;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            fields.push_back({f.name, toFieldType(f.type), f.data, f.length});
        }
        AttentionParams params;
        std::string const err = parse_fields(mKind, fields.data(), static_cast<int32_t>(fields.size()), params);
        if (!err.empty())
        {
            logError(std::string(op_name(mKind)) + " '" + (name ? name : "") + "': " + err);
            return nullptr;
        }
        return new AttentionPlugin(params);
    }
    catch (std::exception const& e)
    {
        logError(e.what());
    }
    return nullptr;
}

} // namespace vggt
