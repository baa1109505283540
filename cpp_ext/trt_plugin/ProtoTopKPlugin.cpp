// SKETCH - NOT COMPILED (no TensorRT on the development machines). See README.md in this folder.
// TensorRT IPluginV3 wrapper around proto_topk_run (../proto_topk.h) for a protospect::ProtoTopK node.
#include <NvInferRuntime.h>

#include <cstring>
#include <string>
#include <vector>

#include "../proto_topk.h"
#include "../proto_topk_config.h"  // kMaxSplits, kWorkspaceAlign: the kernel's own constants

using namespace nvinfer1;

namespace {
constexpr char const* kName = "ProtoTopK";
constexpr char const* kVersion = "1";
constexpr char const* kNamespace = "protospect";
constexpr int kMaxSplits = protospect_topk::kMaxSplits;  // the workspace is sized for the worst case

size_t align256(size_t x) {
    constexpr size_t a = protospect_topk::kWorkspaceAlign;
    return (x + a - 1) / a * a;
}
}  // namespace

class ProtoTopKPlugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    explicit ProtoTopKPlugin(int32_t k) : mK(k) { mFields.emplace_back("k", &mK, PluginFieldType::kINT32, 1); sync(); }

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }
    IPluginV3* clone() noexcept override { return new ProtoTopKPlugin(mK); }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return kName; }
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return kNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }
    int32_t getOutputDataTypes(DataType* out, int32_t, DataType const*, int32_t) const noexcept override {
        out[0] = DataType::kFLOAT;
        return 0;
    }
    int32_t getOutputShapes(DimsExprs const* in, int32_t, DimsExprs const*, int32_t, DimsExprs* out, int32_t,
                            IExprBuilder& expr) noexcept override {
        out[0].nbDims = 3;  // [1, N, k] from queries [1, N, D]
        out[0].d[0] = in[0].d[0];
        out[0].d[1] = in[0].d[1];
        out[0].d[2] = expr.constant(mK);
        return 0;
    }
    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t, int32_t) noexcept override {
        auto const& d = io[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        if (pos == 0) return d.type == DataType::kHALF || d.type == DataType::kFLOAT;
        if (pos == 1) return d.type == io[0].desc.type;  // bank shares the query dtype
        return d.type == DataType::kFLOAT;                // output
    }
    int32_t configurePlugin(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*, int32_t) noexcept override {
        return 0;
    }
    size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t, DynamicPluginTensorDesc const*, int32_t) const noexcept override {
        const int Q = static_cast<int>(in[0].max.d[0] * in[0].max.d[1]);
        const int M = static_cast<int>(in[1].max.d[0]);
        const int dtype = in[0].desc.type == DataType::kHALF ? PROTO_TOPK_FLOAT16 : PROTO_TOPK_FLOAT32;
        // bank norms + the largest kernel workspace (all splits)
        return align256(sizeof(float) * M) + proto_topk_workspace_bytes(Q, M, mK, dtype, kMaxSplits);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) noexcept override { return 0; }
    int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                    void* workspace, cudaStream_t stream) noexcept override {
        const int Q = static_cast<int>(in[0].dims.d[0] * in[0].dims.d[1]);
        const int D = static_cast<int>(in[0].dims.d[2]);
        const int M = static_cast<int>(in[1].dims.d[0]);
        const int dtype = in[0].type == DataType::kHALF ? PROTO_TOPK_FLOAT16 : PROTO_TOPK_FLOAT32;
        auto* sqnorm = static_cast<float*>(workspace);
        // Norms every call: M x D reads, small next to the Q x M x D product (could be cached per bank).
        if (proto_topk_bank_sqnorm(inputs[1], M, D, dtype, sqnorm, stream) != 0) return -1;
        auto* ws = static_cast<char*>(workspace) + align256(sizeof(float) * M);
        const size_t ws_bytes = proto_topk_workspace_bytes(Q, M, mK, dtype, kMaxSplits);
        return proto_topk_run(inputs[0], inputs[1], sqnorm, Q, M, D, mK, dtype, static_cast<float*>(outputs[0]), nullptr,
                              ws, ws_bytes, 0, stream) == 0 ? 0 : -1;
        // NOTE: splits = 0 picks by SM count, always <= kMaxSplits, so the workspace above suffices.
    }
    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }
    PluginFieldCollection const* getFieldsToSerialize() noexcept override { sync(); return &mFC; }

private:
    void sync() { mFC.nbFields = static_cast<int32_t>(mFields.size()); mFC.fields = mFields.data(); }
    int32_t mK;
    std::vector<PluginField> mFields;
    PluginFieldCollection mFC{};
};

class ProtoTopKPluginCreator : public IPluginCreatorV3One {
public:
    ProtoTopKPluginCreator() {
        mFields.emplace_back("k", nullptr, PluginFieldType::kINT32, 1);
        mFC.nbFields = static_cast<int32_t>(mFields.size());
        mFC.fields = mFields.data();
    }
    char const* getPluginName() const noexcept override { return kName; }
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return kNamespace; }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mFC; }
    IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
        int32_t k = 0;
        for (int32_t i = 0; i < fc->nbFields; ++i)
            if (std::strcmp(fc->fields[i].name, "k") == 0) k = *static_cast<int32_t const*>(fc->fields[i].data);
        if (k < 1 || k > PROTO_TOPK_MAX_K) return nullptr;  // TensorRT reports the failed creation
        return new ProtoTopKPlugin(k);
    }

private:
    std::vector<PluginField> mFields;
    PluginFieldCollection mFC{};
};

// Registered by loading this library (trt.get_plugin_registry().load_library) - REGISTER_TENSORRT_PLUGIN
// works for V3 creators in TensorRT >= 10.0.
REGISTER_TENSORRT_PLUGIN(ProtoTopKPluginCreator);
