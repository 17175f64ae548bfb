/* Strict standard base64 (RFC 4648, alphabet A-Z a-z 0-9 + /, padded) decoding into a
 * caller-owned buffer. Knows nothing about Python.
 *
 * Rule (shared with the pure-Python twin): scanning left to right, a byte outside the
 * alphabet and '=' is B64_BAD_CHAR at its offset; an alphabet byte after '=', or a third
 * '=', is B64_BAD_PADDING at its offset; then a length that is not a multiple of 4 is
 * B64_BAD_LENGTH at offset n. Non-zero bits in the last character before the padding
 * are accepted (RFC 4648 section 3.5 leaves the choice to the decoder).
 */
#ifndef FLUSHSINK_B64_H
#define FLUSHSINK_B64_H

#include <stddef.h>
#include <stdint.h>

/* Decode results with their FrameError codes, listed once (the enum and b64_status_codes
 * are made from it; B64_OK and B64_NO_SPACE, the caller's mistake, have no code: ""). */
#define B64_STATUS_LIST(X) \
    X(B64_OK, "") \
    X(B64_BAD_CHAR, "base64_char") \
    X(B64_BAD_PADDING, "base64_padding") \
    X(B64_BAD_LENGTH, "base64_length") \
    X(B64_NO_SPACE, "") \
    X(HEX_BAD_CHAR, "hex_char") \
    X(HEX_BAD_LENGTH, "hex_length")

#define B64_ENUM_MEMBER(id, name) id,
typedef enum { B64_STATUS_LIST(B64_ENUM_MEMBER) B64_NSTATUS } b64_status;
extern const char *const b64_status_codes[B64_NSTATUS];

/* Exact decoded size of valid input, and never less than what b64_decode writes:
 * n * 3 / 4 minus the '=' among the last two bytes. (Inline: asked once per chunk.) */
static inline size_t b64_decoded_size(const uint8_t *src, size_t n)
{
    size_t size = n / 4 * 3 + (n % 4) * 3 / 4;
    size_t pads = (n >= 1 && src[n - 1] == '=') + (n >= 2 && src[n - 2] == '=');
    return size > pads ? size - pads : 0;
}

/* Decode src[0:n] into dst (capacity cap). *written is set even on error (bytes
 * stored before the error); *error_pos is the offset of the error in src.
 * B64_NO_SPACE (nothing written) when cap < b64_decoded_size(src, n). */
b64_status b64_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap,
                      size_t *written, size_t *error_pos);

/* Strict hex (an envelope's audio_encoding="hex"): scanning left to right, a byte that
 * is not 0-9 a-f A-F is HEX_BAD_CHAR at its offset; then an odd length is HEX_BAD_LENGTH
 * at offset n. Decodes src[0:n] into dst (capacity cap >= n / 2, else B64_NO_SPACE);
 * *written and *error_pos as b64_decode's. Hex audio is rare: scalar only. */
b64_status hex_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap,
                      size_t *written, size_t *error_pos);

/* The kernel in use: "scalar", "avx2" (AVX2) or "avx512" (AVX-512 F/BW/VBMI). Until
 * b64_set_kernel is called, the first call (or the first decode) picks the best one this
 * CPU supports. Every kernel gives the same bytes, status and error_pos. */
const char *b64_kernel_name(void);

/* Force a kernel by name ("scalar", or a SIMD one this CPU supports); "auto" picks the
 * best. Returns 0, or -1 if the name is unknown or the CPU lacks the instructions.
 * Not thread-safe: call it before decoding starts (import time, tests). */
int b64_set_kernel(const char *name);

#endif
