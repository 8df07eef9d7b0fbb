// A bf16 x-vector tile on vdpbf16ps (not shipped): y[m, n] = sum_k x[m, k] w[n, k], bf16 x and w, fp32 sums,
// M = 128, one thread. x packed as [kc/2][32 rows][2] (bf16 pairs), each weight pair broadcast straight from its
// row (a 32-bit load), so the weight is never reordered; the third argument cycles that many weight matrices so
// they come from memory. On the 2-core Zen 4 EPYC (233 GFLOP/s a thread of vdpbf16ps), quiet: 211-215 GFLOP/s at
// 6144 x 1536 and 1536 x 6144 with 4 matrices, against torch's bf16 F.linear (oneDNN) at 198-203 on one thread.
// Built into gemma4::linear (eleventh session, the fp32 x-vector tile's driver: x packed from its fp32 copy, sums
// transposed, stored by a scalar loop) it ran 173-200 on one thread and 313-377 on two against oneDNN's 188-203
// and 382-400: slower, so bf16 prefill stays on oneDNN. An earlier reading of 96-126 for oneDNN here was taken
// while a build ran on the other core. The last line checks against a float64 sum.
//   gcc -O3 -mavx512f -mavx512bf16 -mavx512vl dev/perf/gemm_bf16_xt.c -o /tmp/bf16_xt -lm && /tmp/bf16_xt 6144 1536 4
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <math.h>
#define KC 256
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
static inline uint16_t f2bf(float f){uint32_t u;memcpy(&u,&f,4);u+=0x7fff+((u>>16)&1);return u>>16;}
static inline float bf2f(uint16_t b){uint32_t u=(uint32_t)b<<16;float f;memcpy(&f,&u,4);return f;}
// ct[j*ldct + i] (+)= sum_k ..., i<32, j<8
static void micro(const uint16_t*a,const uint16_t*w,long ldw,long kc,float*ct,long ldct,int add){
  __m512 acc[8][2]; for(int j=0;j<8;j++)acc[j][0]=acc[j][1]=_mm512_setzero_ps();
  for(long k=0;k<kc;k+=2){
    __m512bh a0=(__m512bh)_mm512_load_si512(a+k*32), a1=(__m512bh)_mm512_load_si512(a+k*32+32);
    for(int j=0;j<8;j++){ int32_t pr; memcpy(&pr, w+j*ldw+k, 4); __m512bh wv=(__m512bh)_mm512_set1_epi32(pr);
      acc[j][0]=_mm512_dpbf16_ps(acc[j][0],wv,a0); acc[j][1]=_mm512_dpbf16_ps(acc[j][1],wv,a1);}
  }
  for(int j=0;j<8;j++)for(int v=0;v<2;v++){float*p=ct+j*ldct+16*v;_mm512_storeu_ps(p,add?_mm512_add_ps(_mm512_loadu_ps(p),acc[j][v]):acc[j][v]);}
}
int main(int argc,char**argv){
  long M=128,N=atol(argv[1]),K=atol(argv[2]); int nmat=argc>3?atoi(argv[3]):1;
  uint16_t*x=aligned_alloc(64,M*K*2),*w=aligned_alloc(64,(long)nmat*N*K*2),*ap=aligned_alloc(64,M*K*2);
  float*ct=aligned_alloc(64,M*N*4);
  for(long i=0;i<M*K;i++)x[i]=f2bf(rand()/(float)RAND_MAX-0.5f); for(long i=0;i<(long)nmat*N*K;i++)w[i]=f2bf(rand()/(float)RAND_MAX-0.5f);
  double fl=2.0*M*N*K;
  for(int rep=0;rep<4;rep++){ const uint16_t*W=w+(long)(rep%nmat)*N*K;
    double t0=now();
    // pack x: per k-block, groups of 32 rows: ap[kb][g][k/2][32][2]
    for(long k0=0;k0<K;k0+=KC){long kc=K-k0<KC?K-k0:KC; uint16_t*apb=ap+k0*M;
      for(long g=0;g<M/32;g++)for(long k=0;k<kc;k+=2)for(int i=0;i<32;i++){apb[g*kc*32+k*32+2*i]=x[(g*32+i)*K+k0+k];apb[g*kc*32+k*32+2*i+1]=x[(g*32+i)*K+k0+k+1];}}
    for(long n0=0;n0<N;n0+=8)for(long k0=0;k0<K;k0+=KC){long kc=K-k0<KC?K-k0:KC;
      for(long g=0;g<M/32;g++) micro(ap+k0*M+g*kc*32,W+n0*K+k0,K,kc,ct+n0*M+g*32,M,k0>0);}
    double t1=now();
    printf("N=%ld K=%ld bf16 xT 32x8: %.0f GF/s\n",N,K,fl/(t1-t0)/1e9);
  }
  double e=0,r=0; for(long m=0;m<M;m+=9)for(long n=0;n<N;n+=37){double s=0;for(long k=0;k<K;k++)s+=(double)bf2f(x[m*K+k])*bf2f(w[(long)(3%nmat)*N*K+n*K+k]);double d=s-ct[n*M+m];e=e>fabs(d)?e:fabs(d);r=r>fabs(s)?r:fabs(s);}
  printf("max abs err %g (max |y| %g)\n",e,r);
}
