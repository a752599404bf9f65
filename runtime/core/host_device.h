// MOE_HD marks functions that compile for both the host and CUDA devices (plain inline elsewhere).
#pragma once

#if defined(__CUDACC__)
#define MOE_HD __host__ __device__ __forceinline__
#else
#define MOE_HD inline
#endif
