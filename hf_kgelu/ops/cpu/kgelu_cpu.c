/* λ-GELU on the CPU: y = x·Φ(λx), and its backward (dx, and dλ summed per site or per channel),
 * in one pass over memory each way; float32, bfloat16 and float16 tensors, math in float32.
 *
 * Built at first use by hf_kgelu/cpu_kernel/__init__.py with the machine's C compiler
 * (-O3 -march=native); no torch headers. The loops are written so that the compiler vectorises
 * them: no calls, no branches, selects instead.
 *
 * Φ(z) = ½·erfc(|u|) for z < 0, else 1 − ½·erfc(|u|), with u = z/√2, and erfc from Numerical
 * Recipes' erfcc: t·exp(−u² + P(t)), t = 1/(1 + |u|/2), fractional error < 1.2e-7 everywhere, so
 * Φ keeps full relative precision in the negative tail (½·(1 + erf) cancels there). φ(z) =
 * exp(−u²)/√(2π) for the backward.
 *
 * exp of a large negative argument amplifies the argument's rounding (at −u² ≈ −18, one float
 * ulp of the argument is 1e-6 of the result), so the reductions are exact where it matters: u² is
 * split into hi + lo with an fma, n·ln2 is split Cody–Waite, and −hi − n·ln2_hi is exact
 * (Sterbenz). What is left is the rounding of u itself, shared with any float32 path.
 *
 * Results below 2^-126 flush to zero (as the GPU kernels do): there Φ and φ are below any
 * tolerance that float32 outputs can honour.
 *
 * Sums: each fixed chunk of the input gets its own partial sum in double (8 lanes), and the
 * partials are added in chunk order: the result does not depend on the number of threads.
 * Threads (POSIX, a pool started at first need) take chunks as they come free.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f
#define INV_SQRT_2PI_D 0.39894228040143268
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693145751953125f /* 15 significant bits: n·LN2_HI is exact for |n| < 512 */
#define LN2_LO 1.42860682030941723e-6f
#define HI_MAX 103.0f /* exp(−103) < 2^-148: beyond it every result flushes to zero */

#define SITE_CHUNK 16384 /* elements per partial sum (per site) */
#define LANES 8

/* e^r · 2^n for |r| ≤ ~0.35 (degree-7 Taylor, error < 1e-8), 0 when n < −126 */
static inline float exp_reduced(float r, float n) {
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t ni = (int32_t)n;
    int32_t bits = (ni + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return n < -126.0f ? 0.0f : p * scale;
}

/* v rounded to the nearest integer, for |v| < 2^22: adding 1.5·2^23 leaves no fraction bits
 * (plain arithmetic, so it vectorises on any target; the compiler may not fold it without
 * -ffast-math) */
static inline float round_nearest(float v) {
    const float shift = 12582912.0f;
    return (v + shift) - shift;
}

/* 1/d for 1 ≤ d ≤ 8. With KGELU_NEWTON_RECIPROCAL, without a division (a vector division
 * issues once per 5–16 cycles, depending on the CPU): the exponent-flip guess (error < 12.5 %)
 * and three Newton steps (error < 2^-24). benchmarks/cpu_kernel_flags.py compares the two. */
static inline float reciprocal(float d) {
#ifndef KGELU_NEWTON_RECIPROCAL
    return 1.0f / d;
#else
    int32_t bits;
    memcpy(&bits, &d, sizeof bits);
    bits = 0x7EF311C3 - bits;
    float r;
    memcpy(&r, &bits, sizeof r);
    r = r * fmaf(-d, r, 2.0f);
    r = r * fmaf(-d, r, 2.0f);
    r = r * fmaf(-d, r, 2.0f);
    return r;
#endif
}

/* exp(−(hi + lo) + add), the reduction exact up to the rounding of its small remainder */
static inline float exp_neg_square(float hi, float lo, float add) {
    float n = round_nearest((add - hi) * LOG2E);
    float r = fmaf(n, -LN2_HI, -hi); /* exact: n·LN2_HI ≈ −hi */
    r = r + add;
    r = fmaf(n, -LN2_LO, r);
    r = r - lo;
    return exp_reduced(r, n);
}

/* Φ(√2·u), and exp(−u²) through *e when e is not NULL. */
static inline float normal_cdf(float u, float *e) {
    float au = fabsf(u);
    float hi = au * au;
    float lo = fmaf(au, au, -hi);
    int beyond = !(hi <= HI_MAX); /* also NaN, handled below */
    hi = beyond ? HI_MAX : hi;
    lo = beyond ? 0.0f : lo;
    float t = reciprocal(fmaf(0.5f, beyond ? 0.0f : au, 1.0f)); /* beyond: t is not used */
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float half_erfc = 0.5f * t * exp_neg_square(hi, lo, p);
    half_erfc = beyond ? 0.0f : half_erfc;
    int nan = u != u; /* a NaN λ (x is finite): Φ and the density stay NaN, so the output says so */
    if (e) {
        float density = exp_neg_square(hi, lo, 0.0f);
        density = beyond ? 0.0f : density;
        *e = nan ? u : density;
    }
    float cdf = u < 0.0f ? half_erfc : 1.0f - half_erfc;
    return nan ? u : cdf;
}

static inline float forward_one(float x, float s) { return x * normal_cdf(x * s, (float *)0); }

/* dx and the λ-gradient's summand g·x²·exp(−u²) (the 1/√(2π) is applied to the sums) */
static inline float backward_one(float g, float x, float s, float lam, float *dlam_term) {
    float e;
    float cdf = normal_cdf(x * s, &e);
    float z = x * lam;
    *dlam_term = (e * x) * x * g;
    return g * (cdf + z * (e * INV_SQRT_2PI));
}

/* ---- work split: a pool of worker threads, started at first need ------------------------- */
/* Starting a thread per call cost ~60 µs here, more than a 128 K-element chunk of work. The
 * workers wait on a condition variable; a call hands out chunks through an atomic counter. One
 * call uses the pool at a time (another, from a second Python thread, runs its chunks alone),
 * and a fork()ed child starts with an empty pool (its parent's workers do not exist there). */

#define MAX_THREADS 64

static struct {
    pthread_mutex_t lock, busy; /* lock guards the fields; busy is held by the call using the pool */
    pthread_cond_t wake, done;
    int started;                /* workers running */
    uint64_t generation;        /* bumped for every job */
    uint64_t born[MAX_THREADS]; /* the generation when each worker started: earlier jobs are not its own */
    int helpers, pending;       /* workers asked to help with this job; of those, still working */
    void (*run)(void *, int64_t);
    void *args;
    int64_t chunks, next;       /* next: the next chunk to take (atomic) */
} pool;

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_reset(void) {
    pthread_mutex_init(&pool.lock, 0);
    pthread_mutex_init(&pool.busy, 0);
    pthread_cond_init(&pool.wake, 0);
    pthread_cond_init(&pool.done, 0);
    pool.started = 0;
}

static void pool_init(void) {
    pool_reset();
    pthread_atfork(0, 0, pool_reset); /* the child: fresh locks, no workers */
}

static void take_chunks(void (*run)(void *, int64_t), void *args, int64_t chunks, int64_t *next) {
    for (int64_t c; (c = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED)) < chunks;) run(args, c);
}

static void *pool_worker(void *p) {
    int index = (int)(intptr_t)p;
    pthread_mutex_lock(&pool.lock);
    uint64_t seen = pool.born[index];
    for (;;) {
        while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
        seen = pool.generation;
        if (index >= pool.helpers) continue;
        void (*run)(void *, int64_t) = pool.run;
        void *args = pool.args;
        int64_t chunks = pool.chunks;
        pthread_mutex_unlock(&pool.lock);
        take_chunks(run, args, chunks, &pool.next);
        pthread_mutex_lock(&pool.lock);
        if (--pool.pending == 0) pthread_cond_signal(&pool.done);
    }
    return 0;
}

static int start_worker(int index) {
    pthread_attr_t attr;
    pthread_t id;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pool.born[index] = pool.generation;
    int failed = pthread_create(&id, &attr, pool_worker, (void *)(intptr_t)index);
    pthread_attr_destroy(&attr);
    return failed;
}

static void run_chunks(void (*run)(void *, int64_t), void *args, int64_t chunks, int threads) {
    if (threads > chunks) threads = (int)chunks;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    pthread_once(&pool_once, pool_init);
    if (threads <= 1 || pthread_mutex_trylock(&pool.busy) != 0) {
        for (int64_t c = 0; c < chunks; ++c) run(args, c);
        return;
    }
    pthread_mutex_lock(&pool.lock);
    while (pool.started < threads - 1 && start_worker(pool.started) == 0) pool.started++;
    int helpers = pool.started < threads - 1 ? pool.started : threads - 1; /* fewer if a start failed */
    pool.run = run;
    pool.args = args;
    pool.chunks = chunks;
    pool.next = 0;
    pool.helpers = pool.pending = helpers;
    pool.generation++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    take_chunks(run, args, chunks, &pool.next);
    pthread_mutex_lock(&pool.lock);
    while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.busy);
}

/* ---- element types: float32, bfloat16, float16 (math in float32, as on the GPU) ---------- */

enum { DTYPE_F32 = 0, DTYPE_BF16 = 1, DTYPE_F16 = 2 };

static inline float load_f32(const void *p, int64_t i) { return ((const float *)p)[i]; }
static inline void store_f32(void *p, int64_t i, float v) { ((float *)p)[i] = v; }

static inline float load_bf16(const void *p, int64_t i) {
    uint32_t bits = (uint32_t)((const uint16_t *)p)[i] << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* round to nearest even, NaN to 0x7FC0: what torch's float → bfloat16 conversion does */
static inline void store_bf16(void *p, int64_t i, float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    ((uint16_t *)p)[i] = (uint16_t)(v != v ? 0x7FC0u : rounded);
}

/* IEEE half by bit operations (they vectorise; a compiler's _Float16 conversions may call a
 * library function per element). Decoding: shift exponent and mantissa into place and rescale by
 * 2^112, which also normalises subnormals; infinities and NaN keep an all-ones exponent. */
static inline float load_f16(const void *p, int64_t i) {
    uint32_t h = ((const uint16_t *)p)[i];
    uint32_t magnitude = (h & 0x7FFFu) << 13;
    float v;
    memcpy(&v, &magnitude, sizeof v);
    v *= 0x1p112f;
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    bits |= (h & 0x7C00u) == 0x7C00u ? 0x7F800000u : 0u;
    bits |= (h & 0x8000u) << 16;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* Encoding, rounding to nearest even: normals by integer rounding of the shifted bits,
 * subnormals by a float addition that lands the value in the half's subnormal grid, overflow to
 * ±inf, NaN to 0x7E00 (as torch). */
static inline void store_f16(void *p, int64_t i, float v) {
    uint32_t f;
    memcpy(&f, &v, sizeof f);
    uint32_t sign = (f >> 16) & 0x8000u;
    f &= 0x7FFFFFFFu;
    float magnitude;
    memcpy(&magnitude, &f, sizeof magnitude);
    float shifted = magnitude + 0.5f; /* < 2^-14: the half subnormal's bits end up in the low bits */
    uint32_t subnormal;
    memcpy(&subnormal, &shifted, sizeof subnormal);
    subnormal -= 0x3F000000u;
    uint32_t normal = (f + 0xC8000FFFu + ((f >> 13) & 1u)) >> 13; /* rebias (15 − 127) << 23, round */
    uint32_t h = f < 0x38800000u ? subnormal : normal;
    h = f >= 0x47800000u ? (f > 0x7F800000u ? 0x7E00u : 0x7C00u) : h;
    ((uint16_t *)p)[i] = (uint16_t)(h | sign);
}

/* ---- per site (one λ) ---------------------------------------------------------------------- */

typedef struct {
    const void *x, *g;
    void *y;
    double *partials;
    int64_t n;
    float s, lam;
} site_args_t;

/* ---- per channel (λ over the last dimension of a row-major (rows, cols) array) ----------- */

typedef struct {
    const void *x, *g;
    const float *lam;
    void *y;
    double *partials; /* (row blocks, cols) */
    int64_t rows, cols, block_rows;
} channel_args_t;

/* The rows [*r0, *r1) of a per-channel chunk, and s[c] = λ[c]/√2 for its columns. */
static inline void channel_chunk_setup(const channel_args_t *a, int64_t chunk, int64_t *r0, int64_t *r1, float *s) {
    *r0 = chunk * a->block_rows;
    *r1 = *r0 + a->block_rows < a->rows ? *r0 + a->block_rows : a->rows;
    for (int64_t c = 0; c < a->cols; ++c) s[c] = a->lam[c] * INV_SQRT2;
}

/* The four chunk functions for one element type T (load_T, store_T). */
#define DEFINE_CHUNKS(T)                                                                                        \
    static void site_forward_chunk_##T(void *p, int64_t chunk) {                                                \
        site_args_t *a = (site_args_t *)p;                                                                      \
        int64_t lo = chunk * SITE_CHUNK, hi = lo + SITE_CHUNK < a->n ? lo + SITE_CHUNK : a->n;                  \
        const void *x = a->x;                                                                                   \
        void *y = a->y;                                                                                         \
        float s = a->s;                                                                                         \
        _Pragma("omp simd") for (int64_t i = lo; i < hi; ++i) store_##T(y, i, forward_one(load_##T(x, i), s));  \
    }                                                                                                           \
                                                                                                                \
    static void site_backward_chunk_##T(void *p, int64_t chunk) {                                               \
        site_args_t *a = (site_args_t *)p;                                                                      \
        int64_t lo = chunk * SITE_CHUNK, hi = lo + SITE_CHUNK < a->n ? lo + SITE_CHUNK : a->n;                  \
        const void *x = a->x, *g = a->g;                                                                        \
        void *dx = a->y; /* NULL: only dλ wanted */                                                             \
        float s = a->s, lam = a->lam;                                                                           \
        double acc[LANES] = {0};                                                                                \
        float terms[256];                                                                                       \
        for (int64_t start = lo; start < hi; start += 256) {                                                    \
            int64_t len = hi - start < 256 ? hi - start : 256;                                                  \
            if (dx) {                                                                                           \
                _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) store_##T(                                \
                    dx, start + i, backward_one(load_##T(g, start + i), load_##T(x, start + i), s, lam, &terms[i])); \
            } else {                                                                                            \
                _Pragma("omp simd") for (int64_t i = 0; i < len; ++i)                                           \
                    (void)backward_one(load_##T(g, start + i), load_##T(x, start + i), s, lam, &terms[i]);      \
            }                                                                                                   \
            if (!a->partials) continue;                                                                         \
            int64_t full = len - len % LANES;                                                                   \
            for (int64_t i = 0; i < full; i += LANES)                                                           \
                for (int j = 0; j < LANES; ++j) acc[j] += (double)terms[i + j];                                 \
            for (int64_t i = full; i < len; ++i) acc[i - full] += (double)terms[i];                             \
        }                                                                                                       \
        if (a->partials) {                                                                                      \
            double sum = 0.0;                                                                                   \
            for (int j = 0; j < LANES; ++j) sum += acc[j];                                                      \
            a->partials[chunk] = sum;                                                                           \
        }                                                                                                       \
    }                                                                                                           \
                                                                                                                \
    static void channel_forward_chunk_##T(void *p, int64_t chunk) {                                             \
        channel_args_t *a = (channel_args_t *)p;                                                                \
        int64_t r0, r1, cols = a->cols;                                                                         \
        float s[cols > 0 ? cols : 1];                                                                           \
        channel_chunk_setup(a, chunk, &r0, &r1, s);                                                             \
        for (int64_t r = r0; r < r1; ++r) {                                                                     \
            int64_t row = r * cols;                                                                             \
            _Pragma("omp simd") for (int64_t c = 0; c < cols; ++c)                                              \
                store_##T(a->y, row + c, forward_one(load_##T(a->x, row + c), s[c]));                           \
        }                                                                                                       \
    }                                                                                                           \
                                                                                                                \
    static void channel_backward_chunk_##T(void *p, int64_t chunk) {                                            \
        channel_args_t *a = (channel_args_t *)p;                                                                \
        int64_t r0, r1, cols = a->cols;                                                                         \
        float s[cols > 0 ? cols : 1], terms[cols > 0 ? cols : 1];                                               \
        const float *lam = a->lam;                                                                              \
        double *acc = a->partials ? a->partials + chunk * cols : 0;                                             \
        channel_chunk_setup(a, chunk, &r0, &r1, s);                                                             \
        if (acc)                                                                                                \
            for (int64_t c = 0; c < cols; ++c) acc[c] = 0.0;                                                    \
        for (int64_t r = r0; r < r1; ++r) {                                                                     \
            int64_t row = r * cols;                                                                             \
            if (a->y) {                                                                                         \
                _Pragma("omp simd") for (int64_t c = 0; c < cols; ++c) store_##T(                               \
                    a->y, row + c, backward_one(load_##T(a->g, row + c), load_##T(a->x, row + c), s[c], lam[c], &terms[c])); \
            } else {                                                                                            \
                _Pragma("omp simd") for (int64_t c = 0; c < cols; ++c)                                          \
                    (void)backward_one(load_##T(a->g, row + c), load_##T(a->x, row + c), s[c], lam[c], &terms[c]); \
            }                                                                                                   \
            if (acc) _Pragma("omp simd") for (int64_t c = 0; c < cols; ++c) acc[c] += (double)terms[c];         \
        }                                                                                                       \
    }

DEFINE_CHUNKS(f32)
DEFINE_CHUNKS(bf16)
DEFINE_CHUNKS(f16)

typedef void (*chunk_fn)(void *, int64_t);
static const chunk_fn site_forward_chunks[3] = {site_forward_chunk_f32, site_forward_chunk_bf16, site_forward_chunk_f16};
static const chunk_fn site_backward_chunks[3] = {site_backward_chunk_f32, site_backward_chunk_bf16, site_backward_chunk_f16};
static const chunk_fn channel_forward_chunks[3] = {channel_forward_chunk_f32, channel_forward_chunk_bf16, channel_forward_chunk_f16};
static const chunk_fn channel_backward_chunks[3] = {channel_backward_chunk_f32, channel_backward_chunk_bf16, channel_backward_chunk_f16};

static int bad_dtype(int dtype) { return dtype < 0 || dtype > 2; }

/* ---- entry points: x, g, y and dx have the element type `dtype` (DTYPE_*); λ and dλ are
 * float32. Each returns 0, −1 when the scratch for the partial sums cannot be allocated, or −2
 * for an unknown element type. */

static int64_t site_chunks(int64_t n) { return (n + SITE_CHUNK - 1) / SITE_CHUNK; }

int kgelu_site_forward(const void *x, void *y, int64_t n, float lam, int dtype, int threads) {
    if (bad_dtype(dtype)) return -2;
    site_args_t a = {x, 0, y, 0, n, lam * INV_SQRT2, lam};
    run_chunks(site_forward_chunks[dtype], &a, site_chunks(n), threads);
    return 0;
}

/* Runs a backward's chunks with a (chunks, cols) double scratch for their partial sums (written
 * into *partials, which `args` holds), then dlam[c] = Σ over chunks, in chunk order, · 1/√(2π).
 * With dlam NULL there is no scratch and no sum. */
static int run_summed(chunk_fn run, void *args, double **partials, int64_t chunks, int64_t cols, float *dlam, int threads) {
    if (dlam && chunks && !(*partials = (double *)malloc((size_t)(chunks * cols) * sizeof(double)))) return -1;
    run_chunks(run, args, chunks, threads);
    if (dlam) {
        for (int64_t c = 0; c < cols; ++c) {
            double sum = 0.0;
            for (int64_t k = 0; k < chunks; ++k) sum += (*partials)[k * cols + c]; /* chunk order: thread-count independent */
            dlam[c] = (float)(sum * INV_SQRT_2PI_D);
        }
        free(*partials);
    }
    return 0;
}

/* dx into `dx` and dλ = Σ g·x²·φ(λx) into *dlam; either may be NULL */
int kgelu_site_backward(const void *g, const void *x, void *dx, float *dlam, int64_t n, float lam, int dtype, int threads) {
    if (bad_dtype(dtype)) return -2;
    site_args_t a = {x, g, dx, 0, n, lam * INV_SQRT2, lam};
    return run_summed(site_backward_chunks[dtype], &a, &a.partials, site_chunks(n), 1, dlam, threads);
}

static int64_t channel_chunks(int64_t rows, int64_t block_rows) { return (rows + block_rows - 1) / block_rows; }

int kgelu_channel_forward(const void *x, const float *lam, void *y, int64_t rows, int64_t cols, int64_t block_rows, int dtype,
                          int threads) {
    if (bad_dtype(dtype)) return -2;
    channel_args_t a = {x, 0, lam, y, 0, rows, cols, block_rows};
    run_chunks(channel_forward_chunks[dtype], &a, channel_chunks(rows, block_rows), threads);
    return 0;
}

/* dx into `dx` and dλ[c] = Σ_rows g·x²·φ(λx) into `dlam` (cols floats); either may be NULL */
int kgelu_channel_backward(const void *g, const void *x, const float *lam, void *dx, float *dlam, int64_t rows, int64_t cols,
                           int64_t block_rows, int dtype, int threads) {
    if (bad_dtype(dtype)) return -2;
    channel_args_t a = {x, g, lam, dx, 0, rows, cols, block_rows};
    return run_summed(channel_backward_chunks[dtype], &a, &a.partials, channel_chunks(rows, block_rows), cols, dlam, threads);
}
