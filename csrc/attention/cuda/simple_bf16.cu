// Simple (warp-per-row-group) attention kernels for __nv_bfloat16: see simple.cuh.
#include "attention/cuda/simple_launch.cuh"

GEMMA4_SIMPLE_INSTANTIATE(__nv_bfloat16)
