/* libcublas.so.11 for a GPU machine that has only a newer cuBLAS (12 or 13).
 *
 * Why: Candle links cuBLAS by its soname (cudarc's `dynamic-linking`), so a genzoo built with
 * Debian's nvcc 11.8 needs libcublas.so.11 and its versioned symbols, while a machine with CUDA 13
 * has libcublas.so.13. The five functions genzoo imports (`objdump -T target/gpu/genzoo`) keep
 * their signatures and enum values from cuBLAS 11 to 13, so this library exports them under the
 * version node `libcublas.so.11` and forwards each call to the newer library. Built by
 * scripts/build_cuda.sh; put on the library path by scripts/gpu_check.sh only where
 * libcublas.so.11 is missing.
 */
#include <dlfcn.h>
#include <stdio.h>

#include <cublas_v2.h>

static void *newer_cublas_function(const char *name) {
    static void *lib;
    static const char *const candidates[] = {"libcublas.so.13", "libcublas.so.12", NULL};
    for (int i = 0; !lib && candidates[i]; i++) {
        lib = dlopen(candidates[i], RTLD_NOW | RTLD_GLOBAL);
    }
    void *f = lib ? dlsym(lib, name) : NULL;
    if (!f) {
        fprintf(stderr, "cublas11 shim: %s not found in libcublas.so.13 or .12 (%s)\n", name, dlerror());
    }
    return f;
}

/* Defines NAME(PARAMS) forwarding ARGS to the newer cuBLAS's NAME. */
#define FORWARD(name, params, args)                                                   \
    cublasStatus_t CUBLASWINAPI name params {                                         \
        static __typeof__(&name) f;                                                   \
        if (!f) f = (__typeof__(&name))newer_cublas_function(#name);                  \
        return f ? f args : CUBLAS_STATUS_NOT_INITIALIZED;                            \
    }

FORWARD(cublasCreate_v2, (cublasHandle_t *handle), (handle))
FORWARD(cublasDestroy_v2, (cublasHandle_t handle), (handle))
FORWARD(cublasSetStream_v2, (cublasHandle_t handle, cudaStream_t stream), (handle, stream))
FORWARD(cublasDgemmStridedBatched,
        (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
         int k, const double *alpha, const double *A, int lda, long long int strideA,
         const double *B, int ldb, long long int strideB, const double *beta, double *C, int ldc,
         long long int strideC, int batchCount),
        (handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc,
         strideC, batchCount))
FORWARD(cublasGemmStridedBatchedEx,
        (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
         int k, const void *alpha, const void *A, cudaDataType Atype, int lda,
         long long int strideA, const void *B, cudaDataType Btype, int ldb, long long int strideB,
         const void *beta, void *C, cudaDataType Ctype, int ldc, long long int strideC,
         int batchCount, cublasComputeType_t computeType, cublasGemmAlgo_t algo),
        (handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB,
         beta, C, Ctype, ldc, strideC, batchCount, computeType, algo))
