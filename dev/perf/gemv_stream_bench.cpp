// Experiment (2026-12-04): bf16-weight GEMV streaming rate at M = 1 on 2 OpenMP threads, variants of the access
// order and prefetch. A: R rows side by side, prefetched PF tiles ahead into L2 (the kernel before); B: one row at
// a time, U accumulators, prefetch D bytes ahead in the stream into L1 (shipped in linear_gemv_avx512.cpp with
// U = 4, D = 2048); C: the same with vdpbf16ps (x in bf16; other numerics, not shipped).
//   g++ -O3 -fopenmp -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -std=c++17 -include algorithm gemv_stream_bench.cpp
//   ./a.out N K copies     (e.g. 262144 1536 1: the E2B head; 6144 1536 12: an up projection, copies past L3)
// 2-core AVX512-BF16 EPYC, GB/s: head A R4 PF2 35.8-36.7, B U4 D2048 47.0, B U4 D4096 44.0, C U4 D2048 43.1;
// 6144 x 1536 A R4 PF2 30.8-31.6, B U4 D4096 35.4-41.3, B U4 D2048 37.6, C U4 D2048 45.0.
// quick GEMV bandwidth experiment (bf16 weights, fp32 x, M=1), 2 threads OpenMP
#include <immintrin.h>
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include <cstring>
static inline __m512 ld(const uint16_t* p){ return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)),16)); }
// variant A: R rows interleaved, prefetch PF tiles ahead (like shipped, simplified; U=2)
template<int R,int PF>
void tileA(const uint16_t* w,const float* x,int64_t K,float* out){
  __m512 acc[2][R]; for(int u=0;u<2;u++)for(int r=0;r<R;r++)acc[u][r]=_mm512_setzero_ps();
  for(int64_t k=0;k<K;k+=32){
    if((k&31)==0 && PF>0) for(int r=0;r<R;r++) _mm_prefetch((const char*)(w+(PF*R+r)*K+k),_MM_HINT_T1);
    for(int u=0;u<2;u++){ __m512 xv=_mm512_loadu_ps(x+k+16*u); for(int r=0;r<R;r++) acc[u][r]=_mm512_fmadd_ps(ld(w+r*K+k+16*u),xv,acc[u][r]); }
  }
  for(int r=0;r<R;r++) out[r]=_mm512_reduce_add_ps(_mm512_add_ps(acc[0][r],acc[1][r]));
}
// variant B: one row at a time, U accumulators, prefetch D bytes ahead in the stream (0 = none)
template<int U,int D>
void rowB(const uint16_t* w,const float* x,int64_t K,float* out){
  __m512 acc[U]; for(int u=0;u<U;u++)acc[u]=_mm512_setzero_ps();
  for(int64_t k=0;k<K;k+=16*U){
    if(D>0) for(int l=0;l<16*U;l+=32) _mm_prefetch((const char*)(w+k+l)+D,_MM_HINT_T0);
    for(int u=0;u<U;u++) acc[u]=_mm512_fmadd_ps(ld(w+k+16*u),_mm512_loadu_ps(x+k+16*u),acc[u]);
  }
  __m512 s=acc[0]; for(int u=1;u<U;u++) s=_mm512_add_ps(s,acc[u]); out[0]=_mm512_reduce_add_ps(s);
}
// variant C: vdpbf16ps, one row at a time, x as bf16
template<int U,int D>
void rowC(const uint16_t* w,const uint16_t* xb,int64_t K,float* out){
  __m512 acc[U]; for(int u=0;u<U;u++)acc[u]=_mm512_setzero_ps();
  for(int64_t k=0;k<K;k+=32*U){
    if(D>0) for(int l=0;l<32*U;l+=32) _mm_prefetch((const char*)(w+k+l)+D,_MM_HINT_T0);
    for(int u=0;u<U;u++) acc[u]=_mm512_dpbf16_ps(acc[u],(__m512bh)_mm512_loadu_si512(w+k+32*u),(__m512bh)_mm512_loadu_si512(xb+k+32*u));
  }
  __m512 s=acc[0]; for(int u=1;u<U;u++) s=_mm512_add_ps(s,acc[u]); out[0]=_mm512_reduce_add_ps(s);
}
int main(int argc,char**argv){
  int64_t N=atol(argv[1]),K=atol(argv[2]); int copies=atoi(argv[3]);
  std::vector<uint16_t*> ws; for(int c=0;c<copies;c++){ auto p=(uint16_t*)aligned_alloc(64,N*K*2); for(int64_t i=0;i<N*K;i++)p[i]=0x3f80+(i&7); ws.push_back(p);} 
  std::vector<float> x(K,0.5f); std::vector<uint16_t> xb(K,0x3f00); std::vector<float> y(N);
  auto run=[&](const char* name, auto body){
    double best=1e9; std::vector<double> ts;
    for(int it=0;it<30;it++){ const uint16_t* w=ws[it%copies];
      auto a=std::chrono::steady_clock::now();
      #pragma omp parallel num_threads(2)
      { int t=omp_get_thread_num(); int64_t n0=N*t/2/64*64, n1=t==1?N:N/2/64*64; body(w,n0,n1); }
      auto b=std::chrono::steady_clock::now(); ts.push_back(std::chrono::duration<double>(b-a).count()); }
    std::sort(ts.begin(),ts.end()); double med=ts[ts.size()/2];
    printf("%-22s %8.1f us %6.1f GB/s\n",name,med*1e6,N*K*2/med/1e9);
  };
  run("B U2 D4096",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowB<2,4096>(w+n*K,x.data(),K,&y[n]); });
  run("B U8 D4096",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowB<8,4096>(w+n*K,x.data(),K,&y[n]); });
  run("B U4 D8192",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowB<4,8192>(w+n*K,x.data(),K,&y[n]); });
  run("B U4 D2048",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowB<4,2048>(w+n*K,x.data(),K,&y[n]); });
  run("A R4 PF2",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n+4<=n1;n+=4) tileA<4,2>(w+n*K,x.data(),K,&y[n]); });
  run("A R4 PF4",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n+4<=n1;n+=4) tileA<4,4>(w+n*K,x.data(),K,&y[n]); });
  run("A R4 PF0",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n+4<=n1;n+=4) tileA<4,0>(w+n*K,x.data(),K,&y[n]); });
  run("A R2 PF2",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n+2<=n1;n+=2) tileA<2,2>(w+n*K,x.data(),K,&y[n]); });
  run("B U4 D0",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowB<4,0>(w+n*K,x.data(),K,&y[n]); });
  run("B U4 D1024",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowB<4,1024>(w+n*K,x.data(),K,&y[n]); });
  run("B U4 D4096",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowB<4,4096>(w+n*K,x.data(),K,&y[n]); });
  run("C U4 D0",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowC<4,0>(w+n*K,xb.data(),K,&y[n]); });
  run("C U4 D2048",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowC<4,2048>(w+n*K,xb.data(),K,&y[n]); });
  run("C U2 D0",[&](const uint16_t* w,int64_t n0,int64_t n1){ for(int64_t n=n0;n<n1;n++) rowC<2,0>(w+n*K,xb.data(),K,&y[n]); });
}
// Later the same day, quiet: B U4 D4096 beat D2048 by 7-12% in this harness on 1536 x 6144, 1536 x 12288 and
// 12288 x 1536 (64.4 / 56.5 / 77.4 against 57.8 / 51.3 / 70.0 GB/s). In the op itself, builds with 2 KB and 4 KB
// alternated twice, the six E2B shapes moved by up to 30% between runs of the same build (head 48-65 GB/s), so 2 KB
// (the value the full-E2B benchmark ran with) stays.
