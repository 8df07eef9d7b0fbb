// Tensor-core attention kernels (flash_fwd.cuh, flash_bwd.cuh, flash_decode.cuh) for head_dim 512, bf16 and fp16.
// One file per head_dim, so the instantiations compile in parallel.
#include "attention/cuda/flash_bwd.cuh"
#include "attention/cuda/flash_decode.cuh"
#include "attention/cuda/flash_fwd.cuh"

namespace gemma4::attn::cuda {
template void flash_fwd<__nv_bfloat16, 512>(const Args&, cudaStream_t);
template void flash_fwd<__half, 512>(const Args&, cudaStream_t);
template void flash_bwd<__nv_bfloat16, 512>(const BwdArgs&, cudaStream_t);
template void flash_bwd<__half, 512>(const BwdArgs&, cudaStream_t);
template void flash_decode<__nv_bfloat16, 512>(const Args&, int, float*, cudaStream_t);
template void flash_decode<__half, 512>(const Args&, int, float*, cudaStream_t);
template <>
FlashSmem flash_smem<512>() {
  return {FwdCfg<512>::SMEM, std::max(DqCfg<512>::SMEM, DkvCfg<512>::SMEM), DecCfg<512>::SMEM};
}
}  // namespace gemma4::attn::cuda
