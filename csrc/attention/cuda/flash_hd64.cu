// Tensor-core attention kernels (flash_fwd.cuh, flash_bwd.cuh, flash_decode.cuh) for head_dim 64, bf16 and fp16.
// One file per head_dim, so the instantiations compile in parallel.
#include "attention/cuda/flash_bwd.cuh"
#include "attention/cuda/flash_decode.cuh"
#include "attention/cuda/flash_fwd.cuh"

namespace gemma4::attn::cuda {
template void flash_fwd<__nv_bfloat16, 64>(const Args&, cudaStream_t);
template void flash_fwd<__half, 64>(const Args&, cudaStream_t);
template void flash_bwd<__nv_bfloat16, 64>(const BwdArgs&, cudaStream_t);
template void flash_bwd<__half, 64>(const BwdArgs&, cudaStream_t);
template void flash_decode<__nv_bfloat16, 64>(const Args&, int, float*, cudaStream_t);
template void flash_decode<__half, 64>(const Args&, int, float*, cudaStream_t);
template <>
FlashSmem flash_smem<64>() {
  return {FwdCfg<64>::SMEM, std::max(DqCfg<64>::SMEM, DkvCfg<64>::SMEM), DecCfg<64>::SMEM};
}
}  // namespace gemma4::attn::cuda
