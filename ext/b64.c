#include "b64.h"

/* 6-bit value of each byte; 0x80 for '=' and 0xC0 for anything else outside the
 * alphabet, so one OR over a quantum says whether it is clean. */
static const uint8_t decode_table[256] = {
#define X 0xC0
    X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X, X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,
    X,X,X,X,X,X,X,X,X,X,X,62,X,X,X,63, 52,53,54,55,56,57,58,59,60,61,X,X,X,0x80,X,X,
    X,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14, 15,16,17,18,19,20,21,22,23,24,25,X,X,X,X,X,
    X,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40, 41,42,43,44,45,46,47,48,49,50,51,X,X,X,X,X,
    X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X, X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,
    X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X, X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,
    X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X, X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,
    X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X, X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,X,
#undef X
};

size_t b64_decoded_size(const uint8_t *src, size_t n)
{
    size_t size = n / 4 * 3 + (n % 4) * 3 / 4;
    size_t pads = 0;
    if (n >= 1 && src[n - 1] == '=') pads++;
    if (n >= 2 && src[n - 2] == '=') pads++;
    return size > pads ? size - pads : 0;
}

/* The exact error of invalid input, by the rule in b64.h. Slow, error path only. */
static b64_status find_error(const uint8_t *src, size_t n, size_t *error_pos)
{
    size_t pads = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t v = decode_table[src[i]];
        if (v == 0x80) {
            if (++pads > 2) { *error_pos = i; return B64_BAD_PADDING; }
        } else if (v == 0xC0) {
            *error_pos = i;
            return B64_BAD_CHAR;
        } else if (pads) {
            *error_pos = i;
            return B64_BAD_PADDING;
        }
    }
    *error_pos = n;
    return B64_BAD_LENGTH;   /* the only rule left: clean text of a bad length */
}

/* Decodes whole clean quanta; returns how many source bytes it consumed (a multiple
 * of 4, stopping before the first quantum holding a byte that is not in the alphabet). */
static size_t decode_quanta_scalar(const uint8_t *src, size_t n, uint8_t *dst)
{
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t a = decode_table[src[i]], b = decode_table[src[i + 1]];
        uint32_t c = decode_table[src[i + 2]], d = decode_table[src[i + 3]];
        if ((a | b | c | d) & 0x80) break;
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        dst[0] = (uint8_t)(v >> 16);
        dst[1] = (uint8_t)(v >> 8);
        dst[2] = (uint8_t)v;
        dst += 3;
    }
    return i;
}

static size_t (*decode_quanta)(const uint8_t *, size_t, uint8_t *) = decode_quanta_scalar;
static const char *kernel_name = "scalar";

const char *b64_kernel_name(void) { return kernel_name; }

b64_status b64_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap,
                      size_t *written, size_t *error_pos)
{
    *written = 0;
    *error_pos = 0;
    if (cap < b64_decoded_size(src, n)) return B64_NO_SPACE;
    if (n % 4 != 0) return find_error(src, n, error_pos);
    if (n == 0) return B64_OK;
    /* everything but the last quantum, which may hold padding */
    size_t body = n - 4;
    size_t done = decode_quanta(src, body, dst);
    *written = done / 4 * 3;
    if (done != body) return find_error(src, n, error_pos);
    const uint8_t *q = src + body;
    uint32_t a = decode_table[q[0]], b = decode_table[q[1]];
    uint32_t c = decode_table[q[2]], d = decode_table[q[3]];
    uint8_t *out = dst + *written;
    if (!((a | b | c | d) & 0x80)) {
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        out[0] = (uint8_t)(v >> 16); out[1] = (uint8_t)(v >> 8); out[2] = (uint8_t)v;
        *written += 3;
        return B64_OK;
    }
    if (!((a | b) & 0x80) && d == 0x80) {
        if (c == 0x80) {                     /* xx== */
            out[0] = (uint8_t)(a << 2 | b >> 4);
            *written += 1;
            return B64_OK;
        }
        if (!(c & 0x80)) {                   /* xxx= */
            out[0] = (uint8_t)(a << 2 | b >> 4);
            out[1] = (uint8_t)(b << 4 | c >> 2);
            *written += 2;
            return B64_OK;
        }
    }
    return find_error(src, n, error_pos);
}
