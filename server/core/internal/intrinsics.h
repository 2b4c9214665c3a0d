// <immintrin.h> for the files that hold engram's x86 kernels (precision.cc,
// vector_loops.cc), with one warning turned off for the rest of the file:
// GCC 12's AVX-512 reductions start from _mm512_undefined_ps(), which it
// then reports as uninitialised in its own header (GCC bug 105593).
//
// Internal to server/core; include it only in a kernel file: the warning
// stays off for the rest of the file that includes it.
#ifndef ENGRAM_SERVER_CORE_INTERNAL_INTRINSICS_H_
#define ENGRAM_SERVER_CORE_INTERNAL_INTRINSICS_H_

#if defined(__x86_64__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

#endif  // ENGRAM_SERVER_CORE_INTERNAL_INTRINSICS_H_
