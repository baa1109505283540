// PyTorch binding of the fused prototype top-k kernel: thin argument checks around the C ABI in
// proto_topk.h, on the current CUDA stream, with scratch from torch's caching allocator.
// torch_op.py validates everything a user can get wrong first and raises protospect errors; the
// TORCH_CHECKs here only guard against direct misuse of the compiled module.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "proto_topk.h"

namespace {

int dtype_code(const at::Tensor& t) {
    if (t.scalar_type() == at::kHalf) return PROTO_TOPK_FLOAT16;
    TORCH_CHECK(t.scalar_type() == at::kFloat, "proto_topk: tensors must be float16 or float32, got ", t.scalar_type());
    return PROTO_TOPK_FLOAT32;
}

void check_matrix(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), "proto_topk: ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), "proto_topk: ", name, " must be a contiguous 2-D tensor");
}

void check_cuda(int err, const char* what) {
    TORCH_CHECK(err == 0, "proto_topk: ", what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace

at::Tensor bank_sqnorm(const at::Tensor& bank) {
    check_matrix(bank, "bank");
    const c10::cuda::CUDAGuard guard(bank.device());
    auto out = at::empty({bank.size(0)}, bank.options().dtype(at::kFloat));
    check_cuda(proto_topk_bank_sqnorm(bank.data_ptr(), static_cast<int>(bank.size(0)), static_cast<int>(bank.size(1)),
                                      dtype_code(bank), out.data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream()),
               "bank_sqnorm");
    return out;
}

// Returns [dist (Q, k) float32, idx (Q, k) int32 (empty when !return_indices), debug (Q, M) or empty].
std::vector<at::Tensor> knn_sqdist(const at::Tensor& q, const at::Tensor& bank, const at::Tensor& sqnorm, int64_t k,
                                   bool return_indices, int64_t splits, bool debug_scores) {
    check_matrix(q, "queries");
    check_matrix(bank, "bank");
    TORCH_CHECK(q.scalar_type() == bank.scalar_type(), "proto_topk: queries and bank must share a dtype");
    TORCH_CHECK(q.size(1) == bank.size(1), "proto_topk: query dim != prototype dim");
    TORCH_CHECK(sqnorm.is_cuda() && sqnorm.scalar_type() == at::kFloat && sqnorm.numel() == bank.size(0) &&
                    sqnorm.is_contiguous(),
                "proto_topk: bank_sqnorm must be a contiguous float32 CUDA tensor of M values");
    TORCH_CHECK(q.device() == bank.device() && bank.device() == sqnorm.device(), "proto_topk: tensors on different GPUs");
    const c10::cuda::CUDAGuard guard(q.device());
    const int Q = static_cast<int>(q.size(0)), M = static_cast<int>(bank.size(0)), D = static_cast<int>(q.size(1));
    const int kk = static_cast<int>(k);
    auto f32 = q.options().dtype(at::kFloat);
    auto dist = at::empty({Q, kk}, f32);
    auto idx = return_indices ? at::empty({Q, kk}, q.options().dtype(at::kInt)) : at::empty({0}, q.options().dtype(at::kInt));
    auto debug = debug_scores ? at::full({Q, M}, std::numeric_limits<float>::quiet_NaN(), f32) : at::empty({0}, f32);
    const size_t ws_bytes = proto_topk_workspace_bytes(Q, M, kk, dtype_code(q), static_cast<int>(splits));
    auto ws = at::empty({static_cast<int64_t>(ws_bytes)}, q.options().dtype(at::kByte));
    const int err = proto_topk_run_debug(q.data_ptr(), bank.data_ptr(), sqnorm.data_ptr<float>(), Q, M, D, kk,
                                         dtype_code(q), dist.data_ptr<float>(),
                                         return_indices ? idx.data_ptr<int>() : nullptr,
                                         ws_bytes ? ws.data_ptr() : nullptr, ws_bytes, static_cast<int>(splits),
                                         debug_scores ? debug.data_ptr<float>() : nullptr,
                                         c10::cuda::getCurrentCUDAStream().stream());
    check_cuda(err, "knn_sqdist");
    return {dist, idx, debug};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "protospect fused prototype distance + top-k (see cpp_ext/README.md)";
    m.def("bank_sqnorm", &bank_sqnorm, "squared L2 norm of every prototype (fp32)");
    m.def("knn_sqdist", &knn_sqdist, "k smallest squared L2 distances to the bank, ascending, with indices");
    m.attr("max_k") = static_cast<int>(PROTO_TOPK_MAX_K);
}
