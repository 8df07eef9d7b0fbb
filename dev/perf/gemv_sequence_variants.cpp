// Experiment (2026-12-06, twenty-first session): bf16-weight GEMV walks at one row of x over E2B's 315 decode
// projections in the order a token runs them (3.75 GB, from DRAM), 2 OpenMP threads, beside a plain 2-thread sum:
// W = widen bf16 to fp32 in registers and FMA (R rows side by side, their rows PF tiles ahead prefetched with
// HINT), D = vdpbf16ps with x in bf16 (other numerics), row = one row at a time prefetched D bytes ahead.
//   g++ -O3 -fopenmp -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -std=c++17 gemv_sequence_variants.cpp && ./a.out
// 2-core Intel Xeon (AVX-512, AMX), GB/s, two passes (sum 29-31): W R4 PF2 T1 26.6-27.9, PF1/PF3 26.8-28.0, R3/R6/R8/
// R16 25.9-27.5, R4 into L1 25.6-25.7; D R4 PF2 T1 27.1-28.7, D without prefetch 25.5; row into L2 at 2 KB 24.8-24.9,
// row into L2 at 4 KB + L1 at 512 B 21.9-22.1, row without prefetch 21.7-21.8. Shipped: the W R4 PF2 T1 walk on
// Intel CPUs (linear_gemv_avx512.cpp: one_row_stream).
#include <immintrin.h>
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include <algorithm>
static inline __m512 ld(const uint16_t* p){ return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)),16)); }
template<int R,int PF,int HINT>
void tileW(const uint16_t* w,const float* x,const uint16_t*,int64_t K,float* out){
  __m512 tot[R]; for(int r=0;r<R;r++) tot[r]=_mm512_setzero_ps();
  for(int64_t k0=0;k0<K;k0+=256){
  __m512 acc[R]; for(int r=0;r<R;r++)acc[r]=_mm512_setzero_ps();
  for(int64_t k=k0;k<k0+256;k+=32){
    if(PF>0) for(int r=0;r<R;r++) _mm_prefetch((const char*)(w+(PF*R+r)*K+k),(_mm_hint)HINT);
    for(int u=0;u<2;u++){ __m512 xv=_mm512_loadu_ps(x+k+16*u); for(int r=0;r<R;r++) acc[r]=_mm512_fmadd_ps(ld(w+r*K+k+16*u),xv,acc[r]); }
  }
  for(int r=0;r<R;r++) tot[r]=_mm512_add_ps(tot[r],acc[r]);
  }
  for(int r=0;r<R;r++) out[r]=_mm512_reduce_add_ps(tot[r]);
}
template<int R,int PF,int HINT>
void tileD(const uint16_t* w,const float*,const uint16_t* xb,int64_t K,float* out){
  __m512 acc[R]; for(int r=0;r<R;r++)acc[r]=_mm512_setzero_ps();
  for(int64_t k=0;k<K;k+=32){
    if(PF>0) for(int r=0;r<R;r++) _mm_prefetch((const char*)(w+(PF*R+r)*K+k),(_mm_hint)HINT);
    __m512bh xv=(__m512bh)_mm512_loadu_si512(xb+k);
    for(int r=0;r<R;r++) acc[r]=_mm512_dpbf16_ps(acc[r],(__m512bh)_mm512_loadu_si512(w+r*K+k),xv);
  }
  for(int r=0;r<R;r++) out[r]=_mm512_reduce_add_ps(acc[r]);
}
// one row, prefetch T1 at D bytes and T0 at D0 bytes
template<int D,int D0>
void rowW(const uint16_t* w,const float* x,const uint16_t*,int64_t K,float* out){
  __m512 acc[4]; for(int u=0;u<4;u++)acc[u]=_mm512_setzero_ps();
  for(int64_t k=0;k<K;k+=64){
    if(D>0) { _mm_prefetch((const char*)(w+k)+D,_MM_HINT_T1); _mm_prefetch((const char*)(w+k+32)+D,_MM_HINT_T1);}
    if(D0>0) { _mm_prefetch((const char*)(w+k)+D0,_MM_HINT_T0); _mm_prefetch((const char*)(w+k+32)+D0,_MM_HINT_T0);}
    for(int u=0;u<4;u++) acc[u]=_mm512_fmadd_ps(ld(w+k+16*u),_mm512_loadu_ps(x+k+16*u),acc[u]);
  }
  __m512 s=acc[0]; for(int u=1;u<4;u++) s=_mm512_add_ps(s,acc[u]); out[0]=_mm512_reduce_add_ps(s);
}
using Fn=void(*)(const uint16_t*,const float*,const uint16_t*,int64_t,float*);
struct Sh{int64_t n,k;};
int main(){
  const int64_t H=1536; std::vector<Sh> sh;
  for(int i=0;i<35;i++){ int64_t q=i%5==4?4096:2048, m=i>=15?12288:6144;
    Sh l[9]={{q,H},{256,H},{256,H},{H,q},{m,H},{m,H},{H,m},{256,H},{H,256}}; for(auto s:l) sh.push_back(s);}
  std::vector<uint16_t*> ws; double tot=0;
  for(auto s:sh){ auto p=(uint16_t*)aligned_alloc(64,s.n*s.k*2+8192*64); 
    #pragma omp parallel for num_threads(2)
    for(int64_t i=0;i<s.n*s.k;i++)p[i]=0x3f80+(i&7); ws.push_back(p); tot+=s.n*s.k*2;}
  std::vector<float> x(12288,0.5f); std::vector<uint16_t> xb(12288,0x3f00); std::vector<float> y(12288*8);
  int64_t big=int64_t(tot/4); float* bf=(float*)aligned_alloc(64,big*4);
  #pragma omp parallel for num_threads(2)
  for(int64_t i=0;i<big;i++) bf[i]=i&3;
  auto sum=[&]{ auto a=std::chrono::steady_clock::now(); double s=0;
    #pragma omp parallel num_threads(2) reduction(+:s)
    { int t=omp_get_thread_num(); int64_t b0=big*t/2, b1=big*(t+1)/2; __m512 acc=_mm512_setzero_ps(), acc2=_mm512_setzero_ps();
      for(int64_t i=b0;i+32<=b1;i+=32){acc=_mm512_add_ps(acc,_mm512_load_ps(bf+i)); acc2=_mm512_add_ps(acc2,_mm512_load_ps(bf+i+16));} s+=_mm512_reduce_add_ps(_mm512_add_ps(acc,acc2)); }
    auto b=std::chrono::steady_clock::now(); if(s==1) printf("x"); return tot/std::chrono::duration<double>(b-a).count()/1e9; };
  auto run=[&](const char* name, Fn f, int R){
    double best=0;
    for(int it=0;it<3;it++){
      auto a=std::chrono::steady_clock::now();
      for(size_t i=0;i<sh.size();i++){ int64_t N=sh[i].n,K=sh[i].k; const uint16_t* w=ws[i];
        #pragma omp parallel num_threads(2)
        { int t=omp_get_thread_num(); int64_t n0=N*t/2/64*64, n1=t==1?N:N/2/64*64;
          for(int64_t n=n0;n+R<=n1;n+=R) f(w+n*K,x.data(),xb.data(),K,y.data()+n%8192); }
      }
      auto b=std::chrono::steady_clock::now(); best=std::max(best,tot/std::chrono::duration<double>(b-a).count()/1e9);
    }
    printf("%-24s %.1f GB/s   (sum %.1f)\n",name,best,sum()); };
  for(int rep=0;rep<2;rep++){
  run("W R4 PF2 T1",tileW<4,2,_MM_HINT_T1>,4);
  run("W R4 PF1 T1",tileW<4,1,_MM_HINT_T1>,4);
  run("W R4 PF3 T1",tileW<4,3,_MM_HINT_T1>,4);
  run("W R3 PF2 T1",tileW<3,2,_MM_HINT_T1>,3);
  run("W R6 PF2 T1",tileW<6,2,_MM_HINT_T1>,6);
  run("W R8 PF1 T1",tileW<8,1,_MM_HINT_T1>,8);
  run("W R16 PF1 T1",tileW<16,1,_MM_HINT_T1>,16);
  run("W R4 PF2 T0",tileW<4,2,_MM_HINT_T0>,4);
  run("D R4 PF2 T1",tileD<4,2,_MM_HINT_T1>,4);
  run("D R4 PF0",tileD<4,0,_MM_HINT_T1>,4);
  run("row T1 2048",rowW<2048,0>,1);
  run("row T1 4096 T0 512",rowW<4096,512>,1);
  run("row none",rowW<0,0>,1);
  }
}
