// Registration of the two creators with TensorRT's plugin registry, by either route:
//
// 1. The registry loads us (trtexec --dynamicPlugins, IPluginRegistry::loadLibrary, the
//    Python registry's load_library): it looks up getCreators / setLoggerFinder here.
// 2. Anything else dlopens us (trtexec --staticPlugins, polygraphy --plugins, ctypes,
//    plugins.load()): nobody calls getCreators, so a load-time initializer finds the
//    registry of a TensorRT library that is already loaded (dlsym, so this library still
//    does not link libnvinfer) and registers the creators itself.
//
// When route 2 registered them and the registry then asks getCreators (route 1 dlopens us,
// which runs the initializer first), the load-time registration is withdrawn before the
// creators are handed out, so each creator is in the registry once. Route 2 only calls the registry when the loaded TensorRT has the
// IPluginRegistry layout of the headers we were compiled against (TensorRT 11 removed the
// IPluginV2 methods, which moves every virtual slot; TensorRT for RTX 1.7 has the 11
// layout); otherwise it says why on stderr and leaves registration to route 1.
#include "attention/attentionPlugin.h"

#include <NvInferVersion.h>

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <link.h>
#include <mutex>
#include <string>

namespace vggt
{
void handOver() noexcept;

namespace
{
nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;
std::mutex gLoggerMutex;

// The registry the load-time initializer put both creators into (null when it did not).
nvinfer1::IPluginRegistry* gLoadTimeRegistry = nullptr;

nvinfer1::IPluginCreatorInterface* const* creatorList(int32_t& n) noexcept
{
    static AttentionPluginCreator biased(OpKind::kBiased);
    static AttentionPluginCreator sparse(OpKind::kSparse);
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&biased, &sparse};
    n = 2;
    return creators;
}

using GetRegistryFn = nvinfer1::IPluginRegistry* (*) ();
using GetVersionFn = int32_t (*)();

struct TrtLibrary
{
    GetRegistryFn getRegistry = nullptr;
    std::string path; // the loaded library that defines getPluginRegistry
};

bool isTensorRtName(char const* path) noexcept
{
    char const* slash = std::strrchr(path, '/');
    char const* base = slash != nullptr ? slash + 1 : path;
    return std::strncmp(base, "libnvinfer", 10) == 0 || std::strncmp(base, "libtensorrt_rtx", 15) == 0;
}

int findInLoadedObject(dl_phdr_info* info, size_t, void* out) noexcept
{
    auto* lib = static_cast<TrtLibrary*>(out);
    if (info->dlpi_name == nullptr || !isTensorRtName(info->dlpi_name))
        return 0;
    // RTLD_NOLOAD: only a handle to what is loaded already; nothing new gets loaded.
    void* handle = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == nullptr)
        return 0;
    lib->getRegistry = reinterpret_cast<GetRegistryFn>(dlsym(handle, "getPluginRegistry"));
    dlclose(handle);
    return lib->getRegistry != nullptr ? 1 : 0;
}

// The TensorRT library loaded in this process, if any. Python extension modules load
// libnvinfer / libtensorrt_rtx RTLD_LOCAL, where RTLD_DEFAULT cannot see it, hence the walk
// over the loaded objects.
TrtLibrary findLoadedTensorRt() noexcept
{
    TrtLibrary lib;
    lib.getRegistry = reinterpret_cast<GetRegistryFn>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
    if (lib.getRegistry == nullptr)
        dl_iterate_phdr(findInLoadedObject, &lib);
    Dl_info where{};
    if (lib.getRegistry != nullptr && dladdr(reinterpret_cast<void*>(lib.getRegistry), &where) != 0
        && where.dli_fname != nullptr)
        lib.path = where.dli_fname;
    return lib;
}

int32_t libraryVersion(std::string const& path, char const* symbol) noexcept
{
    void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    if (handle == nullptr)
        return -1;
    auto fn = reinterpret_cast<GetVersionFn>(dlsym(handle, symbol));
    int32_t const v = fn != nullptr ? fn() : -1;
    dlclose(handle);
    return v;
}

// Empty when the loaded library's IPluginRegistry has our headers' vtable layout, else why not.
std::string layoutMismatch(std::string const& path) noexcept
{
    constexpr int32_t kHeaderMajor = NV_TENSORRT_MAJOR;
    int32_t const major = libraryVersion(path, "getInferLibMajorVersion");
    int32_t const minor = libraryVersion(path, "getInferLibMinorVersion");
    bool const rtx = path.find("libtensorrt_rtx") != std::string::npos;
    bool ok = false;
    if (rtx)
        ok = kHeaderMajor >= 11 && (major > 1 || (major == 1 && minor >= 7));
    else
        ok = major == kHeaderMajor;
    if (ok)
        return {};
    return path + " is " + (rtx ? "TensorRT for RTX " : "TensorRT ") + std::to_string(major) + "."
        + std::to_string(minor) + " but this library was compiled against TensorRT "
        + std::to_string(kHeaderMajor) + " headers";
}

// Registers at load and deregisters at unload (dlclose, or process exit: this object's
// destructor is queued after the registry exists, so it runs before the registry's own).
struct LoadTimeRegistration
{
    LoadTimeRegistration() noexcept
    {
        TrtLibrary const lib = findLoadedTensorRt();
        if (lib.getRegistry == nullptr)
            return; // no TensorRT loaded yet: the registry will call getCreators
        std::string const why = layoutMismatch(lib.path);
        if (!why.empty())
        {
            std::fprintf(stderr,
                "[vggt_mv plugins] not registering at load time (%s); load the library through "
                "TensorRT's plugin registry instead (load_library / --dynamicPlugins)\n",
                why.c_str());
            return;
        }
        nvinfer1::IPluginRegistry* registry = lib.getRegistry();
        if (registry == nullptr)
            return;
        int32_t n = 0;
        nvinfer1::IPluginCreatorInterface* const* creators = creatorList(n);
        int32_t registered = 0;
        for (int32_t i = 0; i < n; ++i)
        {
            auto* c = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
            if (registry->getCreator(c->getPluginName(), c->getPluginVersion(), c->getPluginNamespace()) != nullptr)
                break; // another copy of the library is registered already; leave it
            if (!registry->registerCreator(*c, c->getPluginNamespace()))
                break;
            ++registered;
        }
        if (registered == n)
        {
            gLoadTimeRegistry = registry;
            return;
        }
        for (int32_t i = 0; i < registered; ++i) // all or nothing
            registry->deregisterCreator(*creators[i]);
    }

    ~LoadTimeRegistration()
    {
        handOver();
    }
};

__attribute__((constructor)) void registerAtLoad() noexcept
{
    static LoadTimeRegistration registration;
}
} // namespace

// Takes the load-time registration back out of the registry: at unload, and when the
// registry itself asks for the creators (it then owns them, tied to its library handle;
// a load_library that receives no creators reports failure).
void handOver() noexcept
{
    if (gLoadTimeRegistry == nullptr)
        return;
    int32_t n = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = creatorList(n);
    for (int32_t i = 0; i < n; ++i)
        gLoadTimeRegistry->deregisterCreator(*creators[i]);
    gLoadTimeRegistry = nullptr;
}

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
    // Registered at load time already: hand them over so the caller registers them once.
    vggt::handOver();
    return vggt::creatorList(nbCreators);
}
}
