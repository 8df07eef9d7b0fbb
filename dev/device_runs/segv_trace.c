/* LD_PRELOAD helper for the GPU machine (no gdb there): on SIGSEGV/SIGABRT print the native stack
 * (glibc backtrace, symbol names from the dynamic tables) to stderr, then die with the signal.
 *   gcc -shared -fPIC -O0 -g -o /tmp/segv_trace.so dev/device_runs/segv_trace.c
 *   LD_PRELOAD=/tmp/segv_trace.so python3 ...                                                      */
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void on_signal(int sig) {
  void *frames[128];
  int n = backtrace(frames, 128);
  const char *head = sig == SIGSEGV ? "\n== native stack at SIGSEGV\n" : "\n== native stack at SIGABRT\n";
  write(2, head, strlen(head));
  backtrace_symbols_fd(frames, n, 2);
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
  sigaction(SIGSEGV, &sa, 0);
  sigaction(SIGABRT, &sa, 0);
}
