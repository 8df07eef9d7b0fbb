// Experiment (2026-12-06, twenty-second session): int8 group-32 GEMV walks at one row of x over E2B's 315 decode
// projections in the order a token runs them (int8 [N, K] + bf16 scales [N, K/32], 2 GB, from DRAM), 2 OpenMP
// threads (one parallel region, a barrier between matrices; MODE=1 drops it), beside a plain 2-thread sum. Timing
// only: x and the lane orders are not those of the shipped kernels.
//   A = the 256-bit kernel of qgemm_g32.h (one row, 8 KB prefetch into L2); E = the 512-bit one of
//   qgemm_g32_q8wide.h (16 blocks a pass); +S = the scales prefetched too; R = rows side by side with the rows PF
//   tiles ahead prefetched; X = E with extra dot products (work without bytes); T = only loads the weights (and
//   scales), no arithmetic; AMX = tdpbssd on 16 weight rows a tile, x as two int8 planes in the B tile's columns.
//   Options: hot (one 1536 x 1536 weight, in the caches), big (the same bytes as 8 matrices of 1536 columns);
//   SHAPE=NxK (9 copies of one shape), FUSED=1 (q/k/v and gate/up as one matrix each), NEXT=bytes (prefetch the
//   next matrix's first bytes during the last rows).
//   g++ -O3 -fopenmp -march=sapphirerapids -std=c++17 qgemv_q8_sequence_variants.cpp && ./a.out [hot|big]
// 2-core Intel Xeon (AVX-512, AMX), GB/s, same minutes: A 19.2-20.5, E 21.2-22.6, A +S 18.4-19.5, E R4 PF2
// 21.2-22.1, E R4 PF0 16.5-17.1, T 23.5-24.4 (big: 29.7-29.9; sum 28-30), FUSED and NEXT within noise, MODE=1
// +0-3%, AMX 19.6-21.0; in a faster period: A 22.5-22.7, E 24.5-25.6 (4K ahead 25.1-25.6), E R4 PF2 23.8-24.0, T
// 26.4-27.4, AMX 21.8-22.6; hot: A 64-69, E 68-73, AMX 102-106, T 186.
#include <immintrin.h>
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cstring>
#include <sys/syscall.h>
#include <unistd.h>
struct alignas(64) TileCfg { uint8_t palette; uint8_t start_row; uint8_t rsv[14]; uint16_t colsb[16]; uint8_t rows[16]; };
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
// pure streaming: weights OR-ed, scales read, no x
template<int PFW>
static inline void rowT(const P& p,int64_t n,float* out,int64_t){
  const int64_t B=p.K/32; const int8_t* w=p.w+n*p.K; const uint16_t* sc=p.sc+n*B;
  __m512i acc=_mm512_setzero_si512();
  for(int64_t b0=0;b0<B;b0+=16){
    if(PFW) for(int l=0;l<8;l++) _mm_prefetch((const char*)(w+b0*32)+PFW+64*l,_MM_HINT_T1);
    for(int t=0;t<8;t++) acc=_mm512_xor_si512(acc,_mm512_loadu_si512(w+(b0+2*t)*32));
    acc=_mm512_xor_si512(acc,_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(sc+b0))));
  }
  out[0]=(float)_mm512_reduce_add_epi32(acc);
}
template<int PFW>
static inline void rowTn(const P& p,int64_t n,float* out,int64_t){
  const int64_t B=p.K/32; const int8_t* w=p.w+n*p.K;
  __m512i acc=_mm512_setzero_si512();
  for(int64_t b0=0;b0<B;b0+=16){
    if(PFW) for(int l=0;l<8;l++) _mm_prefetch((const char*)(w+b0*32)+PFW+64*l,_MM_HINT_T1);
    for(int t=0;t<8;t++) acc=_mm512_xor_si512(acc,_mm512_loadu_si512(w+(b0+2*t)*32));
  }
  out[0]=(float)_mm512_reduce_add_epi32(acc);
}
// E with 2 pairs more work (dummy extra dots) to see compute sensitivity
template<int PFW,int EXTRA>
static inline void rowX(const P& p,int64_t n,float* out,int64_t){
  const int64_t B=p.K/32; const int8_t* w=p.w+n*p.K; const uint16_t* sc=p.sc+n*B;
  __m512 acc=_mm512_setzero_ps();
  for(int64_t b0=0;b0<B;b0+=16){
    if(PFW) for(int l=0;l<8;l++) _mm_prefetch((const char*)(w+b0*32)+PFW+64*l,_MM_HINT_T1);
    __m512i z[8];
    for(int t=0;t<8;t++){ __m512i v=_mm512_loadu_si512(w+(b0+2*t)*32);
      const int16_t* xp=p.x16+(b0+2*t)*32;
      __m512i e=_mm512_srai_epi16(_mm512_slli_epi16(v,8),8), o=_mm512_srai_epi16(v,8);
      z[t]=_mm512_dpwssd_epi32(_mm512_madd_epi16(e,_mm512_loadu_si512(xp)),o,_mm512_loadu_si512(xp+32));
      for(int x=0;x<EXTRA;x++) z[t]=_mm512_dpwssd_epi32(z[t],o,e);
    }
    __m512i a[4];
    for(int t=0;t<4;t++){ a[t]=_mm512_add_epi32(_mm512_unpacklo_epi32(z[2*t],z[2*t+1]),_mm512_unpackhi_epi32(z[2*t],z[2*t+1])); }
    __m512i c0=_mm512_add_epi32(_mm512_unpacklo_epi64(a[0],a[1]),_mm512_unpackhi_epi64(a[0],a[1]));
    __m512i c1=_mm512_add_epi32(_mm512_unpacklo_epi64(a[2],a[3]),_mm512_unpackhi_epi64(a[2],a[3]));
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
static int8_t* g_xt; static float* g_dxp;  // x tiles [K/64][16][64], dx pairs [K/256][16]
template<int PF>
static inline void amx16(const P& p,int64_t n,float* out,int64_t){
  const int64_t K=p.K, B=K/32; alignas(64) int32_t cb[16][16];
  __m512 acc[16]; for(int r=0;r<16;r++) acc[r]=_mm512_setzero_ps();
  alignas(64) static const int16_t di[32]={8,0,8,0,8,1,8,1,8,2,8,2,8,3,8,3,8,4,8,4,8,5,8,5,8,6,8,6,8,7,8,7}; const __m512i dupidx=_mm512_load_si512(di);
  for(int64_t kc=0;kc<K;kc+=256){
    const int8_t* w=p.w+n*K+kc;
    if(PF) for(int r=0;r<16;r++) for(int l=0;l<4;l++) _mm_prefetch((const char*)(w+(PF*16+r)*K+64*l),_MM_HINT_T1);
    _tile_zero(0);
    for(int j=0;j<4;j++){ _tile_loadd(1,w+64*j,K); _tile_loadd(2,g_xt+(kc/64+j)*1024,64); _tile_dpbssd(0,1,2); }
    _tile_stored(0,cb,64);
    const __m512 dxp=_mm512_loadu_ps(g_dxp+(kc/256)*16);
    for(int r=0;r<16;r++){
      __m512i sv=_mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(p.sc+(n+r)*B+kc/32)));
      sv=_mm512_maskz_permutexvar_epi16(0xFFFFFFFF,dupidx,_mm512_zextsi128_si512(_mm512_castsi512_si128(sv)));
      __m512 s=_mm512_mul_ps(_mm512_castsi512_ps(sv),dxp);
      acc[r]=_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cb[r])),s,acc[r]);
    }
  }
  for(int r=0;r<16;r++) out[r]=_mm512_reduce_add_ps(acc[r]);
}
using Fn=void(*)(const P&,int64_t,float*,int64_t);
struct Sh{int64_t n,k;};
int main(int argc,char**argv){
  const int64_t H=1536; std::vector<Sh> sh;
  for(int i=0;i<35;i++){ int64_t q=i%5==4?4096:2048, m=i>=15?12288:6144;
    if(getenv("SHAPE")){ int64_t a,b; sscanf(getenv("SHAPE"),"%ldx%ld",&a,&b); Sh l[9]; for(auto& x:l) x={a,b}; for(auto s:l) sh.push_back(s);} else
    if(getenv("FUSED")){ Sh l[6]={{q+512,H},{H,q},{2*m,H},{H,m},{256,H},{H,256}}; for(auto s:l) sh.push_back(s);} else {
    Sh l[9]={{q,H},{256,H},{256,H},{H,q},{m,H},{m,H},{H,m},{256,H},{H,256}}; for(auto s:l) sh.push_back(s);} }
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
  int NEXT=getenv("NEXT")?atoi(getenv("NEXT")):0;
  auto run=[&](const char* name, Fn f, int R, int rows_ahead){
    double best=0;
    for(int it=0;it<3;it++){
      auto a=std::chrono::steady_clock::now();
      int MODE=getenv("MODE")?atoi(getenv("MODE")):0;
      #pragma omp parallel num_threads(2)
      { TileCfg c{}; c.palette=1; for(int j=0;j<3;j++){c.colsb[j]=64;c.rows[j]=16;} if(R==16) _tile_loadconfig(&c);
        int t=omp_get_thread_num();
      for(size_t i=0;i<sh.size();i++){ int64_t N=sh[i].n,K=sh[i].k; P p{ws[i],ss[i],x.data(),dx.data(),K};
          int64_t n0=N*t/2/64*64, n1=t==1?N:N/2/64*64;
          for(int64_t n=n0;n+R<=n1;n+=R) f(p,n,y.data()+n%8192,rows_ahead*K);
          if(MODE==0){
            #pragma omp barrier
          }
      } }
      auto b=std::chrono::steady_clock::now(); best=std::max(best,tot/std::chrono::duration<double>(b-a).count()/1e9);
    }
    printf("%-28s %.1f GB/s   (sum %.1f)\n",name,best,sum()); fflush(stdout); };
  syscall(SYS_arch_prctl,0x1023,18);
  g_xt=(int8_t*)aligned_alloc(64,12288/64*1024); g_dxp=(float*)aligned_alloc(64,12288/256*64);
  for(int i=0;i<12288/64*1024;i++) g_xt[i]=(i*7)%13-6; for(int i=0;i<12288/16;i++) g_dxp[i]=0.5f;
  if(argc>1 && argv[1][0]=='b'){ // big: the same bytes as 8 matrices
    std::vector<Sh> s2; std::vector<int8_t*> w2; std::vector<uint16_t*> s2s; double t2=0; int64_t per=(int64_t)(tot/8/1.0625)/1536/64*64;
    for(int i=0;i<8;i++){ auto p=(int8_t*)aligned_alloc(64,per*1536+65536); auto q=(uint16_t*)aligned_alloc(64,per*96+65536);
      #pragma omp parallel for num_threads(2)
      for(int64_t j=0;j<per*1536;j++)p[j]=(int8_t)j;
      for(int64_t j=0;j<per*48;j++)q[j]=0x3f80;
      s2.push_back({per,1536}); w2.push_back(p); s2s.push_back(q); t2+=per*1536*17/16; }
    sh=s2; ws=w2; ss=s2s; tot=t2;
  } else if(argc>1){ // hot: one 1536x1536 matrix per thread-half, repeated
    for(auto& x:sh) x={1536,1536}; tot=0; for(auto x:sh) tot+=x.n*x.k*17/16; for(size_t i=1;i<ws.size();i++){ws[i]=ws[0];ss[i]=ss[0];}
  }
  for(int rep=0;rep<2;rep++){
  run("A 8K",rowA<8192,0,0>,1,0);
  run("A 8K +S1K",rowA<8192,1024,0>,1,0);
  run("E 8K",rowE<8192,0>,1,0);
  run("E 4K",rowE<4096,0>,1,0);
  run("E 16K",rowE<16384,0>,1,0);
  run("E 8K +S1K",rowE<8192,1024>,1,0);
  run("E R4 PF2",tileE<4,2,0>,4,0);
  run("E R4 PF2 +S",tileE<4,2,1>,4,0);
  run("E R4 PF0",tileE<4,0,0>,4,0);
  run("X 8K +2 dots",rowX<8192,2>,1,0);
  run("T 8K (no compute)",rowT<8192>,1,0);
  run("T no scales",rowTn<8192>,1,0);
  run("AMX PF0",amx16<0>,16,0);
  run("AMX PF1",amx16<1>,16,0);
  }
}
