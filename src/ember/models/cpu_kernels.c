/* Ember's few-row CPU kernels (decode steps of 1-8 rows), loaded by models/cpu_kernels.py with ctypes.
 *
 * Built once per machine with `cc -O3 -march=native -fopenmp` into ~/.cache/ember/kernels; OpenMP resolves to the
 * libgomp torch already loaded, so these kernels share torch's thread team instead of starting a second one.
 * The weight streams from memory once per call and every row reuses it from registers: at one row this moves
 * the int8 weights about twice as fast as the quantise + torch._int_mm + rescale sequence (docs/engine.md). */
#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#define EMBER_AVX512 1
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define EMBER_VNNI 1
#endif

#define MAX_ROWS 8

int ember_max_rows(void) { return MAX_ROWS; }

int ember_has_vnni(void) {
#ifdef EMBER_VNNI
    return 1;
#else
    return 0;
#endif
}

/* Per row, as models/int8.Int8Linear does it in torch: sx = max(max|x| / 127, 1e-8),
 * xq = round_half_even(x / sx), stored as xq + 128 (unsigned bytes, for VNNI's u8 x s8 dot product). */
static void quantize(const float *x, int M, int K, uint8_t *xu, float *sx) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (int64_t)m * K;
        float amax = 0.f;
        for (int k = 0; k < K; k++) {
            float a = fabsf(r[k]);
            amax = a > amax ? a : amax;
        }
        float s = amax / 127.f;
        s = s < 1e-8f ? 1e-8f : s;
        sx[m] = s;
        for (int k = 0; k < K; k++) xu[(int64_t)m * K + k] = (uint8_t)((int)nearbyintf(r[k] / s) + 128);
    }
}

/* y[m, n] = ((float)(xq[m] . q[n]) * sx[m]) * scale[n], exact int32 dot products: the same bits as the torch
 * path. q is [N, K] row-major int8; rowsum[n] = sum_k q[n, k] undoes the +128 of the unsigned activations. */
void ember_int8_linear(const float *x, int M, int K, const int8_t *q, const int32_t *rowsum, const float *scale,
                       int N, float *y, uint8_t *xu, int threads) {
    float sx[MAX_ROWS];
    quantize(x, M, K, xu, sx);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; n++) {
        const int8_t *w = q + (int64_t)n * K;
        int32_t acc[MAX_ROWS];
        int k0 = 0;
#ifdef EMBER_VNNI
        __m512i a[MAX_ROWS];
        for (int m = 0; m < M; m++) a[m] = _mm512_setzero_si512();
        for (; k0 + 64 <= K; k0 += 64) {
            __m512i wv = _mm512_loadu_si512((const void *)(w + k0));
            for (int m = 0; m < M; m++)
                a[m] = _mm512_dpbusd_epi32(a[m], _mm512_loadu_si512((const void *)(xu + (int64_t)m * K + k0)), wv);
        }
        for (int m = 0; m < M; m++) acc[m] = _mm512_reduce_add_epi32(a[m]);
#else
        for (int m = 0; m < M; m++) acc[m] = 0;
#endif
        for (int m = 0; m < M; m++) {
            const uint8_t *u = xu + (int64_t)m * K;
            int32_t t = acc[m];
            for (int k = k0; k < K; k++) t += (int32_t)u[k] * (int32_t)w[k];
            acc[m] = t - 128 * rowsum[n];
        }
        for (int m = 0; m < M; m++) y[(int64_t)m * N + n] = ((float)acc[m] * sx[m]) * scale[n];
    }
}

static float dot(const float *a, const float *b, int n) {
    int i = 0;
    float t = 0.f;
#ifdef EMBER_AVX512
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    t = _mm512_reduce_add_ps(acc);
#endif
    for (; i < n; i++) t += a[i] * b[i];
    return t;
}

static void axpy(float *y, float a, const float *x, int n) {
    int i = 0;
#ifdef EMBER_AVX512
    __m512 av = _mm512_set1_ps(a);
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

/* Decode attention, one new token per row, read in place from one layer's cache [slots, KV, S, D]:
 * out[r, h] = softmax(scale * q[r, h] . K[slot[r], h / rep, :len[r]]) @ V[...]. Each (row, kv head) task owns
 * its `rep` query heads, so a key or value row is read once for all of them. scores: [R * H, Lmax] scratch. */
void ember_decode_attention(const float *q, const float *kc, const float *vc, const int64_t *slot,
                            const int64_t *len, int R, int H, int KV, int S, int D, float scale, float *out,
                            float *scores, int lmax, int threads) {
    int rep = H / KV;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int task = 0; task < R * KV; task++) {
        int r = task / KV, g = task % KV;
        int L = (int)len[r];
        const float *K = kc + ((int64_t)slot[r] * KV + g) * (int64_t)S * D;
        const float *V = vc + ((int64_t)slot[r] * KV + g) * (int64_t)S * D;
        for (int j = 0; j < rep; j++) {
            int h = g * rep + j;
            const float *qh = q + ((int64_t)r * H + h) * D;
            float *s = scores + ((int64_t)r * H + h) * lmax;
            float m = -INFINITY;
            for (int l = 0; l < L; l++) {
                s[l] = dot(qh, K + (int64_t)l * D, D) * scale;
                m = s[l] > m ? s[l] : m;
            }
            float sum = 0.f;
            for (int l = 0; l < L; l++) {
                s[l] = expf(s[l] - m);
                sum += s[l];
            }
            float *o = out + ((int64_t)r * H + h) * D;
            for (int d = 0; d < D; d++) o[d] = 0.f;
            for (int l = 0; l < L; l++) axpy(o, s[l], V + (int64_t)l * D, D);
            float inv = 1.f / sum;
            for (int d = 0; d < D; d++) o[d] *= inv;
        }
    }
}
