/* Native CPU passes for contiguous NCHW tensors seen as rows = N * C (sample, channel) rows of len = H * W
 * elements: the Distribution-adaptive Binarizer (DAB) of arXiv 2411.10346 (Sec. 3.2, Eq. 4-6) and the shifted
 * PReLU after the binary units (ReActNet's LearnableBias -> PReLU [-> LearnableBias], arXiv 2003.03488).
 *
 * PyTorch runs each as a chain of elementwise ops, each one a pass over memory; here each row is read once from
 * memory and its later passes hit the cache:
 *
 *   dab_forward:      mean = sum(x) / len;  beta = k_c * mean + b_c;  mad = sum|x - beta| / len;
 *                     alpha = exp(a_c * (mad - 1));  out = alpha * sign(x - beta)
 *   dab_binary_input: out = alpha * sign(x - beta)                    (the binary input rebuilt for backward)
 *   dab_backward:     sign_dot = sum(g * alpha * sign(x - beta));      (dL/da before its per-row factor)
 *                     g <- (g * min(|x - beta| - 1, 0)) * (-2 alpha);  per_stat = sum(g)  (dL/dx, dL/dbeta)
 *                     then, given the unit's output gradient, g += CFB^T(output gradient) (the Channel-adaptive
 *                     Full-precision Bypass's adjoint, Sec. 3.3: tiles added, merged channels divided by their size)
 *   shift_prelu_forward:  t = x + b1_c;  y = (t > 0 ? t : w_c * t) [+ b2_c]
 *   shift_prelu_backward: dL/dx = (t > 0 ? g : w_c * g);  per row: sum(dL/dx) (dL/db1),
 *                         sum(t > 0 ? 0 : t * g) (dL/dw), [sum(g) (dL/db2)]
 *
 * Every element is computed with the same IEEE operations, in the same order, as the PyTorch ops (no contraction
 * into fused multiply-adds: compiled with -ffp-contract=off); only the row sums differ: here blocks of 1024
 * elements are summed over 16 lanes (at most 64 terms each), the lanes added pairwise and the blocks in double,
 * where PyTorch sums in a cascade. Rows are split over OpenMP threads (PyTorch's own runtime once PyTorch is
 * loaded). Compiled on first use by binary/native.py.
 */
#include <math.h>
#include <stdint.h>

#define LANES 16
#define BLOCK 1024 /* elements of a row per partial sum: LANES lanes in T, each over at most 64 elements */

#define SIGN_TIMES(v, al) ((v) > 0 ? (al) : ((v) < 0 ? -(al) : (v) * (al)))

/* The row sums: blocks of BLOCK elements summed over LANES lanes in T, the lanes added pairwise in T and the
 * blocks in double. LANE_TOTAL consumes the lanes. */
#define LANE_TOTAL(acc, total)                                                                                \
    do {                                                                                                      \
        for (int l_ = 0; l_ < 8; ++l_) (acc)[l_] += (acc)[l_ + 8];                                            \
        for (int l_ = 0; l_ < 4; ++l_) (acc)[l_] += (acc)[l_ + 4];                                            \
        for (int l_ = 0; l_ < 2; ++l_) (acc)[l_] += (acc)[l_ + 2];                                            \
        (acc)[0] += (acc)[1];                                                                                 \
        (total) += (double)(acc)[0];                                                                          \
    } while (0)

/* total = sum over j < len of TERM (an expression of j), in blocks as above. */
#define ROW_SUM(T, total, len, TERM)                                                                          \
    do {                                                                                                      \
        (total) = 0;                                                                                          \
        for (int64_t start_ = 0; start_ < (len); start_ += BLOCK) {                                           \
            const int64_t end_ = start_ + BLOCK < (len) ? start_ + BLOCK : (len);                             \
            T acc_[LANES] = {0};                                                                              \
            int64_t i_ = start_;                                                                              \
            for (; i_ + LANES <= end_; i_ += LANES)                                                           \
                for (int l_ = 0; l_ < LANES; ++l_) {                                                          \
                    const int64_t j = i_ + l_;                                                                \
                    acc_[l_] += (TERM);                                                                       \
                }                                                                                             \
            for (int l_ = 0; i_ < end_; ++i_, ++l_) {                                                         \
                const int64_t j = i_;                                                                         \
                acc_[l_] += (TERM);                                                                           \
            }                                                                                                 \
            LANE_TOTAL(acc_, total);                                                                          \
        }                                                                                                     \
    } while (0)

/* One element of dab_backward: gr[idx] becomes dL/dx, its terms go to lane l of the two row sums. */
#define BACKWARD_STEP(T, ABS, idx, l)                                                                         \
    do {                                                                                                      \
        const T v = xr[idx] - bt;                                                                             \
        T t = ABS(v) - (T)1;                                                                                  \
        t = t > 0 ? (T)0 : t;                                                                                 \
        const T grad = gr[idx];                                                                               \
        const T gx = (grad * t) * scale;                                                                      \
        dot[l] += grad * SIGN_TIMES(v, al);                                                                   \
        sum[l] += gx;                                                                                         \
        gr[idx] = gx;                                                                                         \
    } while (0)

#define DAB_KERNELS(T, SUFFIX, EXP, ABS)                                                                      \
    /* One row of the binary input: o = alpha * sign(x - beta). */                                            \
    static void binary_row_##SUFFIX(const T *xr, T *o, int64_t len, T bt, T al) {                             \
        for (int64_t i = 0; i < len; ++i) {                                                                   \
            const T v = xr[i] - bt;                                                                           \
            o[i] = SIGN_TIMES(v, al);                                                                         \
        }                                                                                                     \
    }                                                                                                         \
                                                                                                              \
    /* Row r = (sample, channel c) of dL/dx gets CFB^T of the output gradient, in the order of PyTorch's      \
     * adjoint: the r_t tiles (output channel t * c_in + c), then the merged channel it belongs to divided by \
     * its size (c < R: channel r_t * c_in + c % (m - 1) over g inputs; else the last channel over c_in - R   \
     * inputs). */                                                                                            \
    static void add_bypass_grad_##SUFFIX(T *gr, const T *bypass, int64_t r, int64_t len, int64_t c_in,        \
                                         int64_t c_out) {                                                     \
        const int64_t n = r / c_in, c = r % c_in, tiles = c_out / c_in, m = c_out % c_in;                     \
        const T *out_rows = bypass + n * c_out * len;                                                         \
        for (int64_t t = 0; t < tiles; ++t) {                                                                 \
            const T *o = out_rows + (t * c_in + c) * len;                                                     \
            for (int64_t i = 0; i < len; ++i) gr[i] = gr[i] + o[i];                                           \
        }                                                                                                     \
        if (!m) return;                                                                                       \
        const int64_t group = c_in / m, merged_inputs = group * (m - 1);                                      \
        const int64_t channel = c < merged_inputs ? tiles * c_in + c % (m - 1) : c_out - 1;                   \
        const T size = (T)(c < merged_inputs ? group : c_in - merged_inputs);                                 \
        const T *o = out_rows + channel * len;                                                                \
        for (int64_t i = 0; i < len; ++i) gr[i] = gr[i] + o[i] / size;                                        \
    }                                                                                                         \
                                                                                                              \
    void dab_forward_##SUFFIX(int64_t n, int64_t c, int64_t len, const T *x, const T *k, const T *b,          \
                              const T *a, T *out, T *mean, T *beta, T *alpha, T *mad, int threads) {          \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                     \
        for (int64_t r = 0; r < n * c; ++r) {                                                                 \
            const int64_t ch = r % c;                                                                         \
            const T *xr = x + r * len;                                                                        \
            T *o = out + r * len;                                                                             \
            double sum_x, sum_abs;                                                                            \
            ROW_SUM(T, sum_x, len, xr[j]);                                                                    \
            const T m = (T)(sum_x / (double)len);                                                             \
            const T bt = k[ch] * m + b[ch];                                                                   \
            ROW_SUM(T, sum_abs, len, ABS(xr[j] - bt));                                                        \
            const T md = (T)(sum_abs / (double)len);                                                          \
            const T al = EXP(a[ch] * (md - (T)1));                                                            \
            mean[r] = m;                                                                                      \
            beta[r] = bt;                                                                                     \
            mad[r] = md;                                                                                      \
            alpha[r] = al;                                                                                    \
            binary_row_##SUFFIX(xr, o, len, bt, al);                                                          \
        }                                                                                                     \
    }                                                                                                         \
                                                                                                              \
    void dab_binary_input_##SUFFIX(int64_t rows, int64_t len, const T *x, const T *beta, const T *alpha,      \
                                   T *out, int threads) {                                                     \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                     \
        for (int64_t r = 0; r < rows; ++r) {                                                                  \
            const T *xr = x + r * len;                                                                        \
            T *o = out + r * len;                                                                             \
            binary_row_##SUFFIX(xr, o, len, beta[r], alpha[r]);                                               \
        }                                                                                                     \
    }                                                                                                         \
                                                                                                              \
    void dab_backward_##SUFFIX(int64_t rows, int64_t len, T *g, const T *x, const T *beta, const T *alpha,    \
                               T *sign_dot, T *per_stat, const T *bypass, int64_t c_in, int64_t c_out,        \
                               int threads) {                                                                 \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                     \
        for (int64_t r = 0; r < rows; ++r) {                                                                  \
            const T *xr = x + r * len;                                                                        \
            T *gr = g + r * len;                                                                              \
            const T bt = beta[r], al = alpha[r], scale = (T)-2 * al;                                          \
            double dot_total = 0, sum_total = 0;                                                              \
            for (int64_t start = 0; start < len; start += BLOCK) {                                            \
                const int64_t end = start + BLOCK < len ? start + BLOCK : len;                                \
                T dot[LANES] = {0}, sum[LANES] = {0};                                                         \
                int64_t i = start;                                                                            \
                for (; i + LANES <= end; i += LANES)                                                          \
                    for (int l = 0; l < LANES; ++l) BACKWARD_STEP(T, ABS, i + l, l);                          \
                for (int l = 0; i < end; ++i, ++l) BACKWARD_STEP(T, ABS, i, l);                               \
                LANE_TOTAL(dot, dot_total);                                                                   \
                LANE_TOTAL(sum, sum_total);                                                                   \
            }                                                                                                 \
            if (sign_dot) sign_dot[r] = (T)dot_total;                                                         \
            per_stat[r] = (T)sum_total;                                                                       \
            if (bypass) add_bypass_grad_##SUFFIX(gr, bypass, r, len, c_in, c_out);                            \
        }                                                                                                     \
    }

DAB_KERNELS(float, f32, expf, fabsf)
DAB_KERNELS(double, f64, exp, fabs)

/* One element of shift_prelu_backward: gx[idx] = dL/dx, its terms go to lane l of the row sums. */
#define SHIFT_PRELU_STEP(T, idx, l)                                                                           \
    do {                                                                                                      \
        const T t = xr[idx] + b1;                                                                             \
        const T grad = gr[idx];                                                                               \
        const T slope_grad = w * grad, slope_term = t * grad; /* both computed: a select, no branch */        \
        const T gi = t > 0 ? grad : slope_grad;                                                               \
        const T gw = t > 0 ? (T)0 : slope_term;                                                               \
        gxr[idx] = gi;                                                                                        \
        sum_gi[l] += gi;                                                                                      \
        sum_gw[l] += gw;                                                                                      \
        sum_g[l] += grad;                                                                                     \
    } while (0)

#define SHIFT_PRELU_KERNELS(T, SUFFIX)                                                                        \
    void shift_prelu_forward_##SUFFIX(int64_t n, int64_t c, int64_t len, const T *x, const T *b1_c,           \
                                      const T *w_c, const T *b2_c, T *y, int threads) {                       \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                     \
        for (int64_t r = 0; r < n * c; ++r) {                                                                 \
            const int64_t ch = r % c;                                                                         \
            const T *xr = x + r * len;                                                                        \
            T *yr = y + r * len;                                                                              \
            const T b1 = b1_c[ch], w = w_c[ch];                                                               \
            if (b2_c) {                                                                                       \
                const T b2 = b2_c[ch];                                                                        \
                for (int64_t i = 0; i < len; ++i) {                                                           \
                    const T t = xr[i] + b1;                                                                   \
                    yr[i] = (t > 0 ? t : w * t) + b2;                                                         \
                }                                                                                             \
            } else {                                                                                          \
                for (int64_t i = 0; i < len; ++i) {                                                           \
                    const T t = xr[i] + b1;                                                                   \
                    yr[i] = t > 0 ? t : w * t;                                                                \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
                                                                                                              \
    void shift_prelu_backward_##SUFFIX(int64_t n, int64_t c, int64_t len, const T *g, const T *x,             \
                                       const T *b1_c, const T *w_c, T *gx, T *gb1_rows, T *gw_rows,           \
                                       T *gb2_rows, int threads) {                                            \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                     \
        for (int64_t r = 0; r < n * c; ++r) {                                                                 \
            const int64_t ch = r % c;                                                                         \
            const T *restrict xr = x + r * len, *restrict gr = g + r * len;                                   \
            T *restrict gxr = gx + r * len;                                                                   \
            const T b1 = b1_c[ch], w = w_c[ch];                                                               \
            double gi_total = 0, gw_total = 0, g_total = 0;                                                   \
            for (int64_t start = 0; start < len; start += BLOCK) {                                            \
                const int64_t end = start + BLOCK < len ? start + BLOCK : len;                                \
                T sum_gi[LANES] = {0}, sum_gw[LANES] = {0}, sum_g[LANES] = {0};                               \
                int64_t i = start;                                                                            \
                for (; i + LANES <= end; i += LANES)                                                          \
                    for (int l = 0; l < LANES; ++l) SHIFT_PRELU_STEP(T, i + l, l);                            \
                for (int l = 0; i < end; ++i, ++l) SHIFT_PRELU_STEP(T, i, l);                                 \
                LANE_TOTAL(sum_gi, gi_total);                                                                 \
                LANE_TOTAL(sum_gw, gw_total);                                                                 \
                LANE_TOTAL(sum_g, g_total);                                                                   \
            }                                                                                                 \
            gb1_rows[r] = (T)gi_total;                                                                        \
            gw_rows[r] = (T)gw_total;                                                                         \
            if (gb2_rows) gb2_rows[r] = (T)g_total;                                                           \
        }                                                                                                     \
    }

SHIFT_PRELU_KERNELS(float, f32)
SHIFT_PRELU_KERNELS(double, f64)
