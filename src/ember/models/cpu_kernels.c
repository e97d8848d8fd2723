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

/* One (row, kv head) task of decode attention: the `rep` query heads of group g of row r against the first L
 * positions of one slot's keys K and values V ([L, D] each); q rows are q_stride floats apart. */
static void attend_task(const float *q, int64_t q_stride, const float *K, const float *V, int L, int r, int g,
                        int H, int KV, int D, float scale, float *out, float *scores, int lmax) {
    int rep = H / KV;
    for (int j = 0; j < rep; j++) {
        int h = g * rep + j;
        const float *qh = q + (int64_t)r * q_stride + (int64_t)h * D;
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

static void attend_rows(const float *q, int64_t q_stride, const float *kc, const float *vc, const int64_t *slot,
                        const int64_t *len, int R, int H, int KV, int S, int D, float scale, float *out,
                        float *scores, int lmax, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int task = 0; task < R * KV; task++) {
        int r = task / KV, g = task % KV;
        int64_t base = ((int64_t)slot[r] * KV + g) * (int64_t)S * D;
        attend_task(q, q_stride, kc + base, vc + base, (int)len[r], r, g, H, KV, D, scale, out, scores, lmax);
    }
}

/* Decode attention, one new token per row, read in place from one layer's cache [slots, KV, S, D]:
 * out[r, h] = softmax(scale * q[r, h] . K[slot[r], h / rep, :len[r]]) @ V[...]. Each (row, kv head) task owns
 * its `rep` query heads, so a key or value row is read once for all of them. scores: [R * H, Lmax] scratch. */
void ember_decode_attention(const float *q, const float *kc, const float *vc, const int64_t *slot,
                            const int64_t *len, int R, int H, int KV, int S, int D, float scale, float *out,
                            float *scores, int lmax, int threads) {
    attend_rows(q, (int64_t)H * D, kc, vc, slot, len, R, H, KV, S, D, scale, out, scores, lmax, threads);
}

/* RMSNorm of M rows: w * (x * 1 / sqrt(mean(x^2) + eps)), the sum taken in order (the int8 decoder uses this
 * one implementation in every path, so a row's values do not depend on the path or the batch). */
void ember_rms_norm(const float *x, const float *w, int M, int D, float eps, float *out) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (int64_t)m * D;
        float ss = 0.f;
        for (int k = 0; k < D; k++) ss += r[k] * r[k];
        float inv = 1.f / sqrtf(ss / (float)D + eps);
        for (int k = 0; k < D; k++) out[(int64_t)m * D + k] = w[k] * (r[k] * inv);
    }
}

/* act[m, i] = silu(gu[m, i]) * gu[m, I + i]: the gate/up projection's two halves. */
void ember_silu_mul(const float *gu, int M, int I, float *out) {
    for (int m = 0; m < M; m++) {
        const float *g = gu + (int64_t)m * 2 * I, *u = g + I;
        for (int i = 0; i < I; i++) out[(int64_t)m * I + i] = (g[i] / (1.f + expf(-g[i]))) * u[i];
    }
}

/* One int8 Llama layer's weights (row-major [N, K] int8, per-output scales, row sums) and norms. */
typedef struct {
    const float *ln1, *ln2;
    const int8_t *wqkv, *wo, *wgu, *wdown;
    const int32_t *rqkv, *ro, *rgu, *rdown;
    const float *sqkv, *so, *sgu, *sdown;
} EmberInt8Layer;

/* A whole decode step of M <= MAX_ROWS rows through every layer of an int8 Llama decoder, in place on x [M, Dm]:
 * norm, QKV, RoPE (x * cos + roll(x, D/2) * sin_rot, as models/llama.py), cache write, attention, output
 * projection and residual, norm, gate/up, SiLU, down projection and residual. The same arithmetic as the
 * layer-by-layer path (same kernels, same element-wise order; built without FMA contraction), one call.
 * buf: floats for h, qkv, attention, projection and activation temporaries (see cpu_kernels.py). */
void ember_int8_decode(const EmberInt8Layer *layers, int n_layers, float *x, int M, int Dm, const int64_t *slot,
                       const int64_t *pos, const float *cos, const float *sin_rot, int H, int KV, int D, int I,
                       float *kc, float *vc, int n_slots, int S, float eps, float scale, float *buf, uint8_t *xu,
                       float *scores, int lmax, int threads) {
    int nqkv = (H + 2 * KV) * D, half = D / 2;
    float *h = buf, *qkv = h + (int64_t)M * Dm, *att = qkv + (int64_t)M * nqkv, *proj = att + (int64_t)M * H * D;
    float *gu = proj + (int64_t)M * Dm, *act = gu + (int64_t)M * 2 * I, tmp[1024];
    int64_t layer_stride = (int64_t)n_slots * KV * S * D, len[MAX_ROWS];
    for (int m = 0; m < M; m++) len[m] = pos[m] + 1;
    for (int li = 0; li < n_layers; li++) {
        const EmberInt8Layer *L = layers + li;
        float *K = kc + li * layer_stride, *V = vc + li * layer_stride;
        ember_rms_norm(x, L->ln1, M, Dm, eps, h);
        ember_int8_linear(h, M, Dm, L->wqkv, L->rqkv, L->sqkv, nqkv, qkv, xu, threads);
        for (int m = 0; m < M; m++) {
            const float *c = cos + pos[m] * D, *s = sin_rot + pos[m] * D;
            for (int j = 0; j < H + KV; j++) {  /* RoPE on the q and k heads, side by side */
                float *v = qkv + (int64_t)m * nqkv + (int64_t)j * D;
                for (int d = 0; d < D; d++) tmp[d] = v[d];
                for (int d = 0; d < D; d++) {
                    float a = tmp[d] * c[d], b = tmp[(d + half) % D] * s[d];
                    v[d] = a + b;
                }
            }
            for (int g = 0; g < KV; g++) {  /* this token's key and value into the slot's cache */
                int64_t at = (((int64_t)slot[m] * KV + g) * S + pos[m]) * D;
                const float *kh = qkv + (int64_t)m * nqkv + (int64_t)(H + g) * D, *vh = kh + (int64_t)KV * D;
                for (int d = 0; d < D; d++) {
                    K[at + d] = kh[d];
                    V[at + d] = vh[d];
                }
            }
        }
        attend_rows(qkv, nqkv, K, V, slot, len, M, H, KV, S, D, scale, att, scores, lmax, threads);
        ember_int8_linear(att, M, H * D, L->wo, L->ro, L->so, Dm, proj, xu, threads);
        for (int64_t i = 0; i < (int64_t)M * Dm; i++) x[i] = x[i] + proj[i];
        ember_rms_norm(x, L->ln2, M, Dm, eps, h);
        ember_int8_linear(h, M, Dm, L->wgu, L->rgu, L->sgu, 2 * I, gu, xu, threads);
        ember_silu_mul(gu, M, I, act);
        ember_int8_linear(act, M, I, L->wdown, L->rdown, L->sdown, Dm, proj, xu, threads);
        for (int64_t i = 0; i < (int64_t)M * Dm; i++) x[i] = x[i] + proj[i];
    }
}
