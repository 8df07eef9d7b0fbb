// The x-vector tile's experiment (csrc/linear/linear_gemm_avx512.cpp, gemm_panel_xt), one thread, M = 128:
// y[m, n] = sum_k x[m, k] w[n, k] with (1) the 8 x 32 tile after packing the weight (here by a scalar copy; the
// shipped packing uses 8 x 8 transposes), (2) the 8 x 32 microkernel alone on an already packed panel (its
// ceiling), (3) x's rows in the lanes, 32 x 8, each weight broadcast from its row (no weight packing), (4) 48 x 8.
// On the 2-core Zen 4 EPYC (117 GFLOP/s a thread peak), GFLOP/s, 6144 x 1536 / 1536 x 6144: (1) 73 / 59,
// (2) 113 / 115, (3) 110 / 104, (4) 111 / 103; the shipped 8 x 32 tile ran 93-95 in gemma4::linear, (3) 101-106.
//   gcc -O3 -mavx512f -mavx512vl -mfma dev/perf/gemm_xt.c -o /tmp/gemm_xt && /tmp/gemm_xt 6144 1536
// The last line checks (1) against (4): the largest squared difference, a rounding-sized number.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define KC 128
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
// (c) ceiling: 8x32 micro on prepacked a (kc x 8) and b (kc x 32)
static void micro_8x32(const float*a,const float*b,long kc,float*c,long ldc,int add){
  __m512 acc[8][2]; for(int i=0;i<8;i++)acc[i][0]=acc[i][1]=_mm512_setzero_ps();
  for(long k=0;k<kc;k++){__m512 b0=_mm512_load_ps(b+k*32),b1=_mm512_load_ps(b+k*32+16);
    for(int i=0;i<8;i++){__m512 av=_mm512_set1_ps(a[k*8+i]);acc[i][0]=_mm512_fmadd_ps(av,b0,acc[i][0]);acc[i][1]=_mm512_fmadd_ps(av,b1,acc[i][1]);}}
  for(int i=0;i<8;i++)for(int v=0;v<2;v++){float*p=c+i*ldc+16*v;_mm512_storeu_ps(p,add?_mm512_add_ps(_mm512_loadu_ps(p),acc[i][v]):acc[i][v]);}
}
// (b) x^T scheme: a = packed x^T block [kc][32] (32 rows of x), w rows direct (8 rows, stride K); c = cT[n][m] ldc
static void micro_xt_32x8(const float*a,const float*w,long K,long kc,float*c,long ldc,int add){
  __m512 acc[8][2]; for(int j=0;j<8;j++)acc[j][0]=acc[j][1]=_mm512_setzero_ps();
  for(long k=0;k<kc;k++){__m512 a0=_mm512_load_ps(a+k*32),a1=_mm512_load_ps(a+k*32+16);
    for(int j=0;j<8;j++){__m512 wv=_mm512_set1_ps(w[j*K+k]);acc[j][0]=_mm512_fmadd_ps(wv,a0,acc[j][0]);acc[j][1]=_mm512_fmadd_ps(wv,a1,acc[j][1]);}}
  for(int j=0;j<8;j++)for(int v=0;v<2;v++){float*p=c+j*ldc+16*v;_mm512_storeu_ps(p,add?_mm512_add_ps(_mm512_loadu_ps(p),acc[j][v]):acc[j][v]);}
}
// (b2) x^T scheme with 48 rows of x (3 vectors) x 8 w rows: 24 acc
static void micro_xt_48x8(const float*a,const float*w,long K,long kc,float*c,long ldc,int add){
  __m512 acc[8][3]; for(int j=0;j<8;j++)acc[j][0]=acc[j][1]=acc[j][2]=_mm512_setzero_ps();
  for(long k=0;k<kc;k++){__m512 a0=_mm512_load_ps(a+k*48),a1=_mm512_load_ps(a+k*48+16),a2=_mm512_load_ps(a+k*48+32);
    for(int j=0;j<8;j++){__m512 wv=_mm512_set1_ps(w[j*K+k]);acc[j][0]=_mm512_fmadd_ps(wv,a0,acc[j][0]);acc[j][1]=_mm512_fmadd_ps(wv,a1,acc[j][1]);acc[j][2]=_mm512_fmadd_ps(wv,a2,acc[j][2]);}}
  for(int j=0;j<8;j++)for(int v=0;v<3;v++){float*p=c+j*ldc+16*v;_mm512_storeu_ps(p,add?_mm512_add_ps(_mm512_loadu_ps(p),acc[j][v]):acc[j][v]);}
}
int main(int argc,char**argv){
  long M=128,N=atol(argv[1]),K=atol(argv[2]);
  float*x=aligned_alloc(64,M*K*4),*w=aligned_alloc(64,N*K*4),*y=aligned_alloc(64,M*N*4),*yt=aligned_alloc(64,M*N*4),*yd=aligned_alloc(64,M*N*4);
  for(long i=0;i<M*K;i++)x[i]=rand()/(float)RAND_MAX-0.5f; for(long i=0;i<N*K;i++)w[i]=rand()/(float)RAND_MAX-0.5f;
  float*ap=aligned_alloc(64,M*K*4),*bp=aligned_alloc(64,KC*32*4*64);
  double fl=2.0*M*N*K;
  // pack x groups of 8 (a for scheme c) per k-block: ap[kb][g][k][8]
  // scheme (c)-full: per n panel of 32: per k-block: pack w panel (scalar transpose), loop groups
  for(int rep=0;rep<3;rep++){
  double t0=now();
  for(long k0=0;k0<K;k0+=KC){ long kc=K-k0<KC?K-k0:KC; float*apb=ap+k0*M;
    for(long g=0;g<M/8;g++)for(long k=0;k<kc;k++)for(int i=0;i<8;i++)apb[g*kc*8+k*8+i]=x[(g*8+i)*K+k0+k];}
  for(long n0=0;n0<N;n0+=32){
    for(long k0=0;k0<K;k0+=KC){ long kc=K-k0<KC?K-k0:KC;
      for(long k=0;k<kc;k++)for(int j=0;j<32;j++)bp[k*32+j]=w[(n0+j)*K+k0+k];
      for(long g=0;g<M/8;g++) micro_8x32(ap+k0*M+g*kc*8,bp,kc,y+g*8*N+n0,N,k0>0);
    }}
  double t1=now();
  // scheme (c) micro only: same loop without packing w (reuse bp)
  for(long n0=0;n0<N;n0+=32) for(long k0=0;k0<K;k0+=KC){ long kc=K-k0<KC?K-k0:KC;
      for(long g=0;g<M/8;g++) micro_8x32(ap+k0*M+g*kc*8,bp,kc,yd+g*8*N+n0,N,k0>0);}
  double t2=now();
  // scheme (b): pack x^T: per k-block, groups of 32 rows: ap[kb][g][k][32]
  for(long k0=0;k0<K;k0+=KC){ long kc=K-k0<KC?K-k0:KC; float*apb=ap+k0*M;
    for(long g=0;g<M/32;g++)for(long k=0;k<kc;k++)for(int i=0;i<32;i++)apb[g*kc*32+k*32+i]=x[(g*32+i)*K+k0+k];}
  for(long n0=0;n0<N;n0+=8) for(long k0=0;k0<K;k0+=KC){ long kc=K-k0<KC?K-k0:KC;
      for(long g=0;g<M/32;g++) micro_xt_32x8(ap+k0*M+g*kc*32,w+n0*K+k0,K,kc,yt+n0*M+g*32,M,k0>0);}
  double t3=now();
  // scheme (b2): 48-row groups: M=128 not multiple of 48 -> use 96 rows + 32 rows
  for(long k0=0;k0<K;k0+=KC){ long kc=K-k0<KC?K-k0:KC; float*apb=ap+k0*M;
    for(long k=0;k<kc;k++)for(int i=0;i<48;i++)apb[k*48+i]=x[(i)*K+k0+k];
    for(long k=0;k<kc;k++)for(int i=0;i<48;i++)apb[kc*48+k*48+i]=x[(48+i)*K+k0+k];
    for(long k=0;k<kc;k++)for(int i=0;i<32;i++)apb[kc*96+k*32+i]=x[(96+i)*K+k0+k];}
  for(long n0=0;n0<N;n0+=8) for(long k0=0;k0<K;k0+=KC){ long kc=K-k0<KC?K-k0:KC; const float*apb=ap+k0*M;
      micro_xt_48x8(apb,w+n0*K+k0,K,kc,yt+n0*M,M,k0>0); micro_xt_48x8(apb+kc*48,w+n0*K+k0,K,kc,yt+n0*M+48,M,k0>0);
      micro_xt_32x8(apb+kc*96,w+n0*K+k0,K,kc,yt+n0*M+96,M,k0>0);}
  double t4=now();
  printf("N=%ld K=%ld  current(pack w) %.0f  micro-only %.0f  xT 32x8 %.0f  xT 48x8 %.0f GF/s\n",N,K,fl/(t1-t0)/1e9,fl/(t2-t1)/1e9,fl/(t3-t2)/1e9,fl/(t4-t3)/1e9);
  }
  // check
  double e=0; for(long m=0;m<M;m+=7)for(long n=0;n<N;n+=13){double d=y[m*N+n]-yt[n*M+m]; e=e>d*d?e:d*d;} printf("maxdiff2 %g\n",e);
}
