// Simple (warp-per-row-group) attention kernels for float: see simple.cuh.
#include "attention/cuda/simple_launch.cuh"

GEMMA4_SIMPLE_INSTANTIATE(float)
