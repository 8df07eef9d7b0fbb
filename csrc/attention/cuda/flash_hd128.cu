// Tensor-core attention kernels (flash_fwd.cuh, flash_bwd.cuh, flash_decode.cuh) for head_dim 128, bf16 and fp16.
// One file per head_dim, so the instantiations compile in parallel.
#include "attention/cuda/flash_bwd.cuh"
#include "attention/cuda/flash_decode.cuh"
#include "attention/cuda/flash_fwd.cuh"

namespace gemma4::attn::cuda {
template void flash_fwd<__nv_bfloat16, 128>(const Args&, cudaStream_t);
template void flash_fwd<__half, 128>(const Args&, cudaStream_t);
template void flash_bwd<__nv_bfloat16, 128>(const BwdArgs&, cudaStream_t);
template void flash_bwd<__half, 128>(const BwdArgs&, cudaStream_t);
template void flash_decode<__nv_bfloat16, 128>(const Args&, int, float*, cudaStream_t);
template void flash_decode<__half, 128>(const Args&, int, float*, cudaStream_t);
template <>
FlashSmem flash_smem<128>() {
  return {FwdCfg<128>::SMEM, std::max(DqCfg<128>::SMEM, DkvCfg<128>::SMEM), DecCfg<128>::SMEM};
}
}  // namespace gemma4::attn::cuda
