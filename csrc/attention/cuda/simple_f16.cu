// Simple (warp-per-row-group) attention kernels for __half: see simple.cuh.
#include "attention/cuda/simple_launch.cuh"

GEMMA4_SIMPLE_INSTANTIATE(__half)
