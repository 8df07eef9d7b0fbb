// Tensor-core attention kernels (flash_fwd.cuh, flash_bwd.cuh, flash_decode.cuh) for head_dim 256, bf16 and fp16.
// One file per head_dim, so the instantiations compile in parallel.
#include "attention/cuda/flash_bwd.cuh"
#include "attention/cuda/flash_decode.cuh"
#include "attention/cuda/flash_fwd.cuh"

namespace gemma4::attn::cuda {
template void flash_fwd<__nv_bfloat16, 256>(const Args&, cudaStream_t);
template void flash_fwd<__half, 256>(const Args&, cudaStream_t);
template void flash_bwd<__nv_bfloat16, 256>(const BwdArgs&, cudaStream_t);
template void flash_bwd<__half, 256>(const BwdArgs&, cudaStream_t);
template void flash_decode<__nv_bfloat16, 256>(const Args&, int, float*, cudaStream_t);
template void flash_decode<__half, 256>(const Args&, int, float*, cudaStream_t);
template <>
FlashSmem flash_smem<256>() {
  return {FwdCfg<256>::SMEM, std::max(DqCfg<256>::SMEM, DkvCfg<256>::SMEM), DecCfg<256>::SMEM};
}
}  // namespace gemma4::attn::cuda
