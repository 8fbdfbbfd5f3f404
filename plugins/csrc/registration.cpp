// Dynamic registration: TensorRT (trtexec --staticPlugins / --dynamicPlugins, the Python
// registry's load_library, polygraphy --plugins, ctypes + the ONNX parser) looks up
// getCreators / setLoggerFinder in the shared library, so no link-time dependency on
// libnvinfer is needed and loading the library twice registers nothing twice (the
// registry owns deduplication by name/version/namespace; our creators are singletons).
#include "attention/attentionPlugin.h"

#include <cstdio>
#include <mutex>

namespace vggt
{
namespace
{
nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;
std::mutex gLoggerMutex;
} // namespace

void logError(std::string const& message) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    nvinfer1::ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
        logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
    else  // loaded outside TensorRT's registry (ctypes): still say why a plugin was refused
        std::fprintf(stderr, "[vggt_mv plugins] %s\n", message.c_str());
}
} // namespace vggt

extern "C"
{
void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(vggt::gLoggerMutex);
    vggt::gLoggerFinder = finder;
}

nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static vggt::AttentionPluginCreator biased(vggt::OpKind::kBiased);
    static vggt::AttentionPluginCreator sparse(vggt::OpKind::kSparse);
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&biased, &sparse};
    nbCreators = 2;
    return creators;
}
}
