// Experiment (2026-12-06, twenty-second session): int8 group-32 GEMV walks at one row of x over E2B's 315 decode
// projections in the order a token runs them (int8 [N, K] + bf16 scales [N, K/32], 2 GB, from DRAM), 2 OpenMP
// threads, beside a plain 2-thread sum. A = the 256-bit kernel of qgemm_g32.h (one row, 8 KB prefetch into L2),
// E = the 512-bit one of qgemm_g32_q8wide.h (16 blocks a pass), +S = the scales prefetched too, R = rows side by
// side with rows PF tiles ahead prefetched. Timing only: x and the lane orders are not those of the shipped kernels.
//   g++ -O3 -fopenmp -march=sapphirerapids -std=c++17 qgemv_q8_sequence_variants.cpp && ./a.out [hot]
// 2-core Intel Xeon (AVX-512, AMX), GB/s, same minutes: A 19.2-20.5, E 21.2-22.6, A +S 18.4-19.5, E R4 PF2 21.2-22.1,
// E without prefetch (R4 PF0) 16.5-17.1; hot (one 1536 x 1536 weight): A 64-66, E 64-69.
#include <immintrin.h>
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cstring>
struct P { const int8_t* w; const uint16_t* sc; const int16_t* x16; const float* dx; int64_t K; };
static inline __m256i half2(const int8_t* w,int off){ return _mm256_loadu2_m128i((const __m128i*)(w+32+off),(const __m128i*)(w+off)); }
static inline __m256i dot4(const __m256i w[4], const int16_t* xp){
  auto x=[xp](int j){return _mm256_loadu_si256((const __m256i*)(xp+16*j));};
  __m256i s=_mm256_dpwssd_epi32(_mm256_madd_epi16(w[0],x(0)),w[1],x(1));
  return _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(s,w[2],x(2)),w[3],x(3)); }
// current style: one row, 256-bit, weights prefetched PFW bytes ahead into L2, scales PFS bytes ahead (0: none)
template<int PFW,int PFS,int RO>
static inline void rowA(const P& p,int64_t n,float* out, int64_t nrows_ahead_bytes){
  const int64_t B=p.K/32; const int8_t* w=p.w+n*p.K; const uint16_t* sc=p.sc+n*B;
  __m256 acc=_mm256_setzero_ps();
  for(int64_t b0=0;b0<B;b0+=8){
    if(PFW) for(int l=0;l<4;l++) _mm_prefetch((const char*)(w+b0*32)+PFW+64*l,_MM_HINT_T1);
    if(RO) for(int l=0;l<4;l++) _mm_prefetch((const char*)(w+b0*32)+nrows_ahead_bytes+64*l,_MM_HINT_T1);
    if(PFS && (b0&31)==0) _mm_prefetch((const char*)(sc+b0)+PFS,_MM_HINT_T1);
    __m256i s[4];
    for(int t=0;t<4;t++){ const int8_t* q=w+(b0+2*t)*32; __m256i v01=half2(q,0),v23=half2(q,16), wv[4];
      wv[0]=_mm256_srai_epi16(_mm256_slli_epi16(v01,8),8); wv[1]=_mm256_srai_epi16(_mm256_slli_epi16(v23,8),8);
      wv[2]=_mm256_srai_epi16(v01,8); wv[3]=_mm256_srai_epi16(v23,8);
      s[t]=dot4(wv,p.x16+b0*32+t*64); }
    __m256i sum=_mm256_hadd_epi32(_mm256_hadd_epi32(s[0],s[1]),_mm256_hadd_epi32(s[2],s[3]));
    __m256 ws=_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(sc+b0))),16));
    acc=_mm256_fmadd_ps(_mm256_cvtepi32_ps(sum),_mm256_mul_ps(ws,_mm256_loadu_ps(p.dx+b0)),acc);
  }
  __m128 h=_mm_add_ps(_mm256_castps256_ps128(acc),_mm256_extractf128_ps(acc,1)); h=_mm_hadd_ps(h,h); h=_mm_hadd_ps(h,h); out[0]=_mm_cvtss_f32(h);
}
// 512-bit even/odd: 64 bytes (2 blocks) per step, x16 split even/odd per block
template<int PFW,int PFS,int HINT=_MM_HINT_T1>
static inline void rowE(const P& p,int64_t n,float* out,int64_t){
  const int64_t B=p.K/32; const int8_t* w=p.w+n*p.K; const uint16_t* sc=p.sc+n*B;
  __m512 acc=_mm512_setzero_ps();
  for(int64_t b0=0;b0<B;b0+=16){
    if(PFW) for(int l=0;l<8;l++) _mm_prefetch((const char*)(w+b0*32)+PFW+64*l,(_mm_hint)HINT);
    if(PFS) _mm_prefetch((const char*)(sc+b0)+PFS,_MM_HINT_T1);
    __m512i z[8];
    for(int t=0;t<8;t++){ __m512i v=_mm512_loadu_si512(w+(b0+2*t)*32);
      const int16_t* xp=p.x16+(b0+2*t)*32;
      __m512i e=_mm512_srai_epi16(_mm512_slli_epi16(v,8),8), o=_mm512_srai_epi16(v,8);
      z[t]=_mm512_dpwssd_epi32(_mm512_madd_epi16(e,_mm512_loadu_si512(xp)),o,_mm512_loadu_si512(xp+32)); }
    // z[t]: lanes 0-7 block b0+2t, 8-15 block b0+2t+1 -> 16 block sums
    __m512i a[4];
    for(int t=0;t<4;t++){ a[t]=_mm512_add_epi32(_mm512_unpacklo_epi32(z[2*t],z[2*t+1]),_mm512_unpackhi_epi32(z[2*t],z[2*t+1])); }
    __m512i c0=_mm512_add_epi32(_mm512_unpacklo_epi64(a[0],a[1]),_mm512_unpackhi_epi64(a[0],a[1]));
    __m512i c1=_mm512_add_epi32(_mm512_unpacklo_epi64(a[2],a[3]),_mm512_unpackhi_epi64(a[2],a[3]));
    // c: each 128-bit lane holds 4 blocks' partial; lanes 0,1 -> first 256 (block halves) ... fold 128-bit lanes pairwise
    __m512i d=_mm512_add_epi32(_mm512_shuffle_i32x4(c0,c1,0x88),_mm512_shuffle_i32x4(c0,c1,0xDD));
    int64_t cnt=B-b0<16?B-b0:16; __mmask16 m=cnt==16?0xFFFF:(1u<<cnt)-1;
    __m512 ws=_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m,sc+b0)),16));
    acc=_mm512_fmadd_ps(_mm512_cvtepi32_ps(d),_mm512_mul_ps(ws,_mm512_maskz_loadu_ps(m,p.dx+b0)),acc);
  }
  out[0]=_mm512_reduce_add_ps(acc);
}
// R rows side by side of rowE, rows PF tiles ahead prefetched into L2
template<int R,int PF,int PFS>
static inline void tileE(const P& p,int64_t n,float* out,int64_t){
  const int64_t B=p.K/32;
  __m512 acc[R]; for(int r=0;r<R;r++) acc[r]=_mm512_setzero_ps();
  for(int64_t b0=0;b0<B;b0+=16){
    for(int r=0;r<R;r++){ const int8_t* w=p.w+(n+r)*p.K; const uint16_t* sc=p.sc+(n+r)*B;
      if(PF) for(int l=0;l<8;l++) _mm_prefetch((const char*)(w+b0*32)+PF*R*p.K+64*l,_MM_HINT_T1);
      if(PFS) _mm_prefetch((const char*)(sc+b0)+PF*R*B*2,_MM_HINT_T1);
      __m512i z[8];
      for(int t=0;t<8;t++){ __m512i v=_mm512_loadu_si512(w+(b0+2*t)*32);
        const int16_t* xp=p.x16+(b0+2*t)*32;
        __m512i e=_mm512_srai_epi16(_mm512_slli_epi16(v,8),8), o=_mm512_srai_epi16(v,8);
        z[t]=_mm512_dpwssd_epi32(_mm512_madd_epi16(e,_mm512_loadu_si512(xp)),o,_mm512_loadu_si512(xp+32)); }
      __m512i a[4];
      for(int t=0;t<4;t++){ a[t]=_mm512_add_epi32(_mm512_unpacklo_epi32(z[2*t],z[2*t+1]),_mm512_unpackhi_epi32(z[2*t],z[2*t+1])); }
      __m512i c0=_mm512_add_epi32(_mm512_unpacklo_epi64(a[0],a[1]),_mm512_unpackhi_epi64(a[0],a[1]));
      __m512i c1=_mm512_add_epi32(_mm512_unpacklo_epi64(a[2],a[3]),_mm512_unpackhi_epi64(a[2],a[3]));
      __m512i d=_mm512_add_epi32(_mm512_shuffle_i32x4(c0,c1,0x88),_mm512_shuffle_i32x4(c0,c1,0xDD));
      int64_t cnt=B-b0<16?B-b0:16; __mmask16 m=cnt==16?0xFFFF:(1u<<cnt)-1;
      __m512 ws=_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m,sc+b0)),16));
      acc[r]=_mm512_fmadd_ps(_mm512_cvtepi32_ps(d),_mm512_mul_ps(ws,_mm512_maskz_loadu_ps(m,p.dx+b0)),acc[r]);
    }
  }
  for(int r=0;r<R;r++) out[r]=_mm512_reduce_add_ps(acc[r]);
}
using Fn=void(*)(const P&,int64_t,float*,int64_t);
struct Sh{int64_t n,k;};
int main(int argc,char**argv){
  const int64_t H=1536; std::vector<Sh> sh;
  for(int i=0;i<35;i++){ int64_t q=i%5==4?4096:2048, m=i>=15?12288:6144;
    Sh l[9]={{q,H},{256,H},{256,H},{H,q},{m,H},{m,H},{H,m},{256,H},{H,256}}; for(auto s:l) sh.push_back(s);}
  std::vector<int8_t*> ws; std::vector<uint16_t*> ss; double tot=0;
  for(auto s:sh){ auto p=(int8_t*)aligned_alloc(64,s.n*s.k+65536); auto q=(uint16_t*)aligned_alloc(64,s.n*s.k/16+65536);
    #pragma omp parallel for num_threads(2)
    for(int64_t i=0;i<s.n*s.k;i++)p[i]=(int8_t)(i*37);
    for(int64_t i=0;i<s.n*s.k/32;i++)q[i]=0x3f80;
    ws.push_back(p); ss.push_back(q); tot+=s.n*s.k+s.n*s.k/16;}
  std::vector<int16_t> x(12288*2,3); std::vector<float> dx(12288,0.5f); std::vector<float> y(12288*16);
  int64_t big=int64_t(tot/4); float* bf=(float*)aligned_alloc(64,big*4);
  #pragma omp parallel for num_threads(2)
  for(int64_t i=0;i<big;i++) bf[i]=i&3;
  auto sum=[&]{ auto a=std::chrono::steady_clock::now(); double s=0;
    #pragma omp parallel num_threads(2) reduction(+:s)
    { int t=omp_get_thread_num(); int64_t b0=big*t/2, b1=big*(t+1)/2; __m512 acc=_mm512_setzero_ps(), acc2=_mm512_setzero_ps();
      for(int64_t i=b0;i+32<=b1;i+=32){acc=_mm512_add_ps(acc,_mm512_load_ps(bf+i)); acc2=_mm512_add_ps(acc2,_mm512_load_ps(bf+i+16));} s+=_mm512_reduce_add_ps(_mm512_add_ps(acc,acc2)); }
    auto b=std::chrono::steady_clock::now(); if(s==1) printf("x"); return tot/std::chrono::duration<double>(b-a).count()/1e9; };
  auto run=[&](const char* name, Fn f, int R, int rows_ahead){
    double best=0;
    for(int it=0;it<3;it++){
      auto a=std::chrono::steady_clock::now();
      for(size_t i=0;i<sh.size();i++){ int64_t N=sh[i].n,K=sh[i].k; P p{ws[i],ss[i],x.data(),dx.data(),K};
        #pragma omp parallel num_threads(2)
        { int t=omp_get_thread_num(); int64_t n0=N*t/2/64*64, n1=t==1?N:N/2/64*64;
          for(int64_t n=n0;n+R<=n1;n+=R) f(p,n,y.data()+n%8192,rows_ahead*K); }
      }
      auto b=std::chrono::steady_clock::now(); best=std::max(best,tot/std::chrono::duration<double>(b-a).count()/1e9);
    }
    printf("%-28s %.1f GB/s   (sum %.1f)\n",name,best,sum()); fflush(stdout); };
  if(argc>1){ // hot: one 1536x1536 matrix per thread-half, repeated
    for(auto& x:sh) x={1536,1536}; tot=0; for(auto x:sh) tot+=x.n*x.k*17/16; for(size_t i=1;i<ws.size();i++){ws[i]=ws[0];ss[i]=ss[0];}
  }
  for(int rep=0;rep<2;rep++){
  run("A 8K",rowA<8192,0,0>,1,0);
  run("E 8K",rowE<8192,0>,1,0);
  run("E 4K",rowE<4096,0>,1,0);
  run("E 16K",rowE<16384,0>,1,0);
  run("E 2K T0",rowE<2048,0,_MM_HINT_T0>,1,0);
  run("E 8K T2",rowE<8192,0,_MM_HINT_T2>,1,0);
  run("E R4 PF2",tileE<4,2,0>,4,0);
  run("E R4 PF4",tileE<4,4,0>,4,0);
  run("E R8 PF1",tileE<8,1,0>,8,0);
  }
}
