#include "frame.h"

#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Byte classes for the string scanner: 0 = plain ASCII (fast path), 1 = quote,
 * 2 = backslash, 3 = control, 4 = start of a multi-byte UTF-8 sequence or invalid. */
static const uint8_t string_class[256] = {
    3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3, 3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,
    0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,2,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4, 4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,
    4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4, 4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,
    4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4, 4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,
    4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4, 4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,
};

/* Offset of the first byte at or after i that is not plain ASCII string content (a
 * quote, a backslash, a control byte or a non-ASCII byte), or n. Most of a frame is
 * short keys and ids: 16 bytes at a time, with SSE2 (baseline on x86-64) or 8 with SWAR. */
static inline size_t skip_plain(const uint8_t *buf, size_t n, size_t i)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    while (i + 16 <= n) {
        __m128i v = _mm_loadu_si128((const __m128i *)(buf + i));
        /* signed compare: bytes >= 0x80 are negative, so "< 0x20" flags them too */
        __m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                    _mm_cmpeq_epi8(v, backslash)),
                                       _mm_cmplt_epi8(v, space));
        unsigned mask = (unsigned)_mm_movemask_epi8(special);
        if (mask) return i + (size_t)__builtin_ctz(mask);
        i += 16;
    }
#else
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, buf + i, 8);
        uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
        /* a byte of each is flagged when zero, i.e. a quote or a backslash; then the
         * bytes below 0x20 and the bytes with the top bit set */
        uint64_t flags = ((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w) | w;
        if (flags & highs) break;   /* the scalar loop finds the exact byte */
        i += 8;
    }
#endif
    while (i < n && string_class[buf[i]] == 0) i++;
    return i;
}

static int hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads \uXXXX at buf[i] (buf[i] == '\\', buf[i+1] == 'u'). Returns the code unit,
 * -1 if a hex digit is bad, -2 if the frame ends first. */
static long read_u_escape(const uint8_t *buf, size_t n, size_t i)
{
    long value = 0;
    for (size_t k = 2; k < 6; k++) {
        if (i + k >= n) return -2;
        int h = hex_value(buf[i + k]);
        if (h < 0) return -1;
        value = value * 16 + h;
    }
    return value;
}

/* Length of the valid UTF-8 sequence at buf[i], or 0 if invalid (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF), the same rule as
 * Python's strict UTF-8 decoder. */
static size_t utf8_sequence(const uint8_t *buf, size_t n, size_t i)
{
    uint8_t c = buf[i];
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (i + 1 >= n || buf[i + 1] < lo || buf[i + 1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
        if (i + k >= n || (buf[i + k] & 0xC0) != 0x80) return 0;
    return len;
}

static fs_status check_string(const uint8_t *buf, size_t n, size_t start, size_t *end,
                              int *has_escape, size_t *error_offset);

fs_status fs_check_string(const uint8_t *buf, size_t n, size_t start, size_t *end,
                          int *has_escape, size_t *error_offset)
{
    return check_string(buf, n, start, end, has_escape, error_offset);
}

static fs_status check_string(const uint8_t *buf, size_t n, size_t start, size_t *end,
                              int *has_escape, size_t *error_offset)
{
    size_t i = start;
    int escaped = 0;
    for (;;) {
        i = skip_plain(buf, n, i);
        if (i >= n) { *error_offset = n; return FS_E_TRUNCATED; }
        switch (string_class[buf[i]]) {
        case 1:
            *end = i;
            *has_escape = escaped;
            return FS_OK;
        case 2: {
            escaped = 1;
            if (i + 1 >= n) { *error_offset = n; return FS_E_TRUNCATED; }
            uint8_t e = buf[i + 1];
            if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n'
                || e == 'r' || e == 't') { i += 2; break; }
            if (e != 'u') { *error_offset = i; return FS_E_ESCAPE; }
            long unit = read_u_escape(buf, n, i);
            if (unit == -2) { *error_offset = n; return FS_E_TRUNCATED; }
            if (unit == -1) { *error_offset = i; return FS_E_ESCAPE; }
            if (unit >= 0xD800 && unit <= 0xDBFF) {
                /* a high surrogate must be followed at once by an escaped low one; a
                 * frame that ends before that escape is complete is truncated */
                size_t k = i + 6;
                long low = -1;
                if (k >= n || (buf[k] == '\\' && k + 1 >= n)) { *error_offset = n; return FS_E_TRUNCATED; }
                if (buf[k] == '\\' && buf[k + 1] == 'u') {
                    low = read_u_escape(buf, n, k);
                    if (low == -2) { *error_offset = n; return FS_E_TRUNCATED; }
                }
                if (low < 0xDC00 || low > 0xDFFF) { *error_offset = i; return FS_E_SURROGATE; }
                i += 12;
            } else if (unit >= 0xDC00 && unit <= 0xDFFF) {
                *error_offset = i;
                return FS_E_SURROGATE;
            } else {
                i += 6;
            }
            break;
        }
        case 3:
            *error_offset = i;
            return FS_E_CONTROL;
        default: {
            size_t len = utf8_sequence(buf, n, i);
            if (len == 0) { *error_offset = i; return FS_E_UTF8; }
            i += len;
        }
        }
    }
}

size_t fs_unescape_chars(const uint8_t *buf, size_t start, size_t end,
                         uint8_t *chars, size_t *offsets)
{
    size_t count = 0, i = start;
    while (i < end) {
        uint8_t c = buf[i];
        offsets[count] = i;
        if (c == '\\') {
            uint8_t e = buf[i + 1];
            switch (e) {
            case 'b': c = '\b'; i += 2; break;
            case 'f': c = '\f'; i += 2; break;
            case 'n': c = '\n'; i += 2; break;
            case 'r': c = '\r'; i += 2; break;
            case 't': c = '\t'; i += 2; break;
            case 'u': {
                long unit = read_u_escape(buf, end, i);
                c = unit < 0x80 ? (uint8_t)unit : 0x80;
                i += (unit >= 0xD800 && unit <= 0xDBFF) ? 12 : 6;
                break;
            }
            default: c = e; i += 2; break;   /* " \ / */
            }
        } else if (c < 0x80) {
            i += 1;
        } else {
            i += c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            c = 0x80;
        }
        chars[count++] = c;
    }
    offsets[count] = end;
    return count;
}

/* ---- the JSON scanner ------------------------------------------------------------ */

typedef struct {
    const uint8_t *buf;
    size_t n;
    size_t error_offset;
    fs_frame *frame;
    int guesses;                             /* FS_GUESS_*: see fs_scan */
    size_t members;                          /* top-level members before data */
    fs_tmpl_member member[FS_TMPL_MEMBERS];  /* the first of them, for the template */
    size_t data_end;                         /* data's closing quote, once passed; else 0 */
    size_t after;                            /* top-level members after data */
    fs_tmpl_member after_member[FS_TMPL_MEMBERS];   /* offsets from data_end */
    const fs_env *env;                       /* fs_scan_env's envelope, else NULL */
    fs_value *inner;                         /* its object nodes' values */
    fs_env_token *token;                     /* fs_scan_env with a memo: the value tokens */
    uint32_t tokens;                         /* (FS_ENV_TOKENS + 1: too many) */
} scanner;

/* A value token for the envelope's template (fs_env_memo). */
static inline void push_token(scanner *s, size_t start, size_t end, uint8_t kind)
{
    if (s->token == NULL) return;
    if (s->tokens < FS_ENV_TOKENS) {
        s->token[s->tokens].start = (uint32_t)start;
        s->token[s->tokens].end = (uint32_t)end;
        s->token[s->tokens].kind = kind;
    }
    if (s->tokens <= FS_ENV_TOKENS) s->tokens++;
}

/* scan_object's parent for an object off the envelope's paths (or any, in fs_scan) */
#define NO_NODE (-2)

/* A top-level member's value was buf[value:value_end] (for the template). */
static inline void record_member(scanner *s, size_t value, size_t value_end, int key)
{
    if (key == FS_KEY_DATA) {   /* (a data string skipped with its end known) */
        if (value_end > value && s->buf[value] == '"') s->data_end = value_end - 1;
        return;
    }
    if (s->data_end != 0) {
        if (s->after < FS_TMPL_MEMBERS && value_end - s->data_end <= FS_TMPL_BYTES) {
            fs_tmpl_member *m = &s->after_member[s->after];
            m->value = (uint16_t)(value - s->data_end);
            m->value_end = (uint16_t)(value_end - s->data_end);
            m->key = (int8_t)key;
        }
        s->after++;
        return;
    }
    if (s->members < FS_TMPL_MEMBERS && value_end <= FS_TMPL_BYTES) {
        fs_tmpl_member *m = &s->member[s->members];
        m->value = (uint16_t)value;
        m->value_end = (uint16_t)value_end;
        m->key = (int8_t)key;
    }
    s->members++;
}

static inline int is_ws(uint8_t c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* If the frame ends with '"' ws* '}' ws* after position quote, the offset of that last
 * '"' (the tentative end of a string opened at quote), else 0. */
static size_t tail_quote(const uint8_t *b, size_t n, size_t quote)
{
    if (n >= quote + 3 && b[n - 1] == '}' && b[n - 2] == '"') return n - 2;   /* compact */
    size_t j = n;
    while (j > quote + 1 && is_ws(b[j - 1])) j--;
    if (j <= quote + 2 || b[j - 1] != '}') return 0;
    j--;
    while (j > quote + 1 && is_ws(b[j - 1])) j--;
    if (j <= quote + 1 || b[j - 1] != '"') return 0;
    return j - 1;
}

static inline size_t skip_ws(const uint8_t *buf, size_t n, size_t i)
{
    /* fast exits for the two layouts servers use: no whitespace (compact JSON) and the
     * single space Python's json.dumps puts after ':' and ',' */
    if (i < n && buf[i] > ' ') return i;
    if (i + 1 < n && buf[i] == ' ' && buf[i + 1] > ' ') return i + 1;
    while (i < n && (buf[i] == ' ' || buf[i] == '\n' || buf[i] == '\r' || buf[i] == '\t')) i++;
    return i;
}

static fs_status fail(scanner *s, fs_status status, size_t offset)
{
    s->error_offset = offset;
    return status;
}

static fs_status scan_value(scanner *s, size_t *pos, int depth);

static fs_status scan_string(scanner *s, size_t *pos, size_t *start, size_t *end, int *esc)
{
    /* *pos is at the opening quote */
    *start = *pos + 1;
#if defined(__SSE2__)
    /* Most strings of a frame are keys and short values: one load answers them here,
     * without a call (the first special byte is their closing quote) */
    if (*start + 16 <= s->n) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s->buf + *start));
        __m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                                                    _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))),
                                       _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
        unsigned mask = (unsigned)_mm_movemask_epi8(special);
        if (mask) {
            size_t i = *start + (size_t)__builtin_ctz(mask);
            if (s->buf[i] == '"') {
                *end = i;
                *esc = 0;
                *pos = i + 1;
                return FS_OK;
            }
        }
    }
#endif
    fs_status st = check_string(s->buf, s->n, *start, end, esc, &s->error_offset);
    if (st != FS_OK) return st;
    *pos = *end + 1;
    return FS_OK;
}

/* The first offset at or after j that does not hold a digit, or n. */
static inline size_t digits_end(const uint8_t *b, size_t n, size_t j)
{
#if defined(__SSE2__)
    if (j + 16 <= n) {   /* a number's digits are few: one load sees them all */
        __m128i v = _mm_loadu_si128((const __m128i *)(b + j));
        /* signed compares: bytes >= 0x80 are negative, so not digits */
        __m128i digit = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8('0' - 1)),
                                      _mm_cmplt_epi8(v, _mm_set1_epi8('9' + 1)));
        unsigned others = ~(unsigned)_mm_movemask_epi8(digit) & 0xFFFFu;
        if (others) return j + (size_t)__builtin_ctz(others);
        j += 16;
    }
#endif
    while (j < n && (uint8_t)(b[j] - '0') <= 9) j++;
    return j;
}

/* The number starting at b[*pos] (a '-' or a digit): on success *pos is its end. */
static inline fs_status number_end(const uint8_t *b, size_t n, size_t *pos, size_t *error_offset)
{
    size_t j = *pos;
#define DIGIT(k) ((k) < n && (uint8_t)(b[k] - '0') <= 9)
#define FAIL(status, offset) do { *error_offset = (offset); return (status); } while (0)
    if (b[j] == '-') {
        j++;
        if (j >= n) FAIL(FS_E_TRUNCATED, n);
        if (!DIGIT(j)) FAIL(FS_E_NUMBER, j);
    }
    if (b[j] == '0') j++;
    else j = digits_end(b, n, j);
    if (j < n && b[j] == '.') {
        j++;
        if (j >= n) FAIL(FS_E_TRUNCATED, n);
        if (!DIGIT(j)) FAIL(FS_E_NUMBER, j);
        j = digits_end(b, n, j);
    }
    if (j < n && (b[j] | 0x20) == 'e') {
        j++;
        if (j < n && (b[j] == '+' || b[j] == '-')) j++;
        if (j >= n) FAIL(FS_E_TRUNCATED, n);
        if (!DIGIT(j)) FAIL(FS_E_NUMBER, j);
        j = digits_end(b, n, j);
    }
#undef FAIL
#undef DIGIT
    *pos = j;
    return FS_OK;
}

static fs_status scan_number(scanner *s, size_t *pos)
{
    return number_end(s->buf, s->n, pos, &s->error_offset);
}

static fs_status scan_literal(scanner *s, size_t *pos, const char *word, size_t len)
{
    for (size_t k = 0; k < len; k++) {
        size_t i = *pos + k;
        if (i >= s->n) return fail(s, FS_E_TRUNCATED, s->n);
        if (s->buf[i] != (uint8_t)word[k]) return fail(s, FS_E_SYNTAX, i);
    }
    *pos += len;
    return FS_OK;
}

/* Compare a validated string content with an ASCII name, unescaping if needed
 * (an escape is at most 12 bytes, so longer contents cannot match). */
static int string_equals(const uint8_t *buf, size_t start, size_t end, int escaped,
                         const char *name, size_t name_len)
{
    if (!escaped)
        return end - start == name_len && memcmp(buf + start, name, name_len) == 0;
    uint8_t chars[12 * FS_ENV_NAME_MAX];
    size_t offsets[12 * FS_ENV_NAME_MAX + 1];
    if (end - start > sizeof(chars) || name_len > FS_ENV_NAME_MAX) return 0;
    size_t count = fs_unescape_chars(buf, start, end, chars, offsets);
    return count == name_len && memcmp(chars, name, name_len) == 0;
}

#define FS_NAME(id, name) name,
const char *const fs_status_codes[FS_NSTATUS] = {FS_STATUS_LIST(FS_NAME)};
const char *const fs_key_names[FS_NKEYS] = {FS_KEY_LIST(FS_NAME)};
const char *const fs_type_names[FS_NTYPES] = {FS_TYPE_LIST(FS_NAME)};
#undef FS_NAME

/* Unescaped text p[0:len] is the list entry's name: a constant-length compare the
 * compiler inlines ("" entries never match). */
#define FS_MATCH_NAME(id, name) \
    if (sizeof(name) > 1 && len == sizeof(name) - 1 && memcmp(p, name, sizeof(name) - 1) == 0) \
        return id;

/* Which known key a top-level key is, or -1. Escaped keys are unescaped first, so
 * "t\u0079pe" is "type": otherwise two parsers could disagree on what a frame says. */
static int known_key(const uint8_t *buf, size_t start, size_t end, int escaped)
{
    if (!escaped) {
        const uint8_t *p = buf + start;
        size_t len = end - start;
        FS_KEY_LIST(FS_MATCH_NAME)
        return -1;
    }
    for (int k = 0; k < FS_NKEYS; k++)
        if (string_equals(buf, start, end, 1, fs_key_names[k], strlen(fs_key_names[k])))
            return k;
    return -1;
}

fs_type fs_frame_type(const uint8_t *buf, const fs_frame *frame)
{
    const fs_value *v = &frame->keys[FS_KEY_TYPE];
    if (v->kind == FS_ABSENT || v->kind == FS_NULL) return FS_TYPE_NONE;
    if (v->kind != FS_STRING) return FS_TYPE_BAD;
    if (!v->has_escape) {
        const uint8_t *p = buf + v->start;
        size_t len = v->end - v->start;
        FS_TYPE_LIST(FS_MATCH_NAME)
        return FS_TYPE_UNKNOWN;
    }
    for (int t = 0; t < FS_NTYPES; t++)
        if (fs_type_names[t][0] != 0
                && string_equals(buf, v->start, v->end, 1, fs_type_names[t],
                                 strlen(fs_type_names[t])))
            return (fs_type)t;
    return FS_TYPE_UNKNOWN;
}

#undef FS_MATCH_NAME

/* The envelope node a member of node parent's object is, or -1. */
static int env_member(const fs_env *env, int parent, const uint8_t *buf, size_t start,
                      size_t end, int escaped)
{
    size_t len = end - start;
    for (int k = 0; k < env->count; k++) {
        const fs_env_node *node = &env->node[k];
        if (node->parent != parent) continue;
        if (escaped) {
            if (string_equals(buf, start, end, 1, (const char *)node->name, node->len))
                return k;
            continue;
        }
        if (len != node->len || buf[start] != node->name[0]) continue;
        size_t i = 1;
        while (i < len && buf[start + i] == node->name[i]) i++;
        if (i == len) return k;
    }
    return -1;
}

/* depth, top: see scan_value; parent: the envelope node whose object this is (-1: the
 * frame's, in fs_scan_env), or NO_NODE. */
static fs_status scan_object(scanner *s, size_t *pos, int depth, int top, int parent)
{
    const uint8_t *b = s->buf;
    size_t n = s->n, i = *pos + 1;
    fs_status st;
    i = skip_ws(b, n, i);
    if (i >= n) return fail(s, FS_E_TRUNCATED, n);
    if (b[i] == '}') { *pos = i + 1; return FS_OK; }
    for (;;) {
        if (b[i] != '"') return fail(s, FS_E_SYNTAX, i);
        size_t key_offset = i, ks, ke;
        int kesc;
        if ((st = scan_string(s, &i, &ks, &ke, &kesc)) != FS_OK) return st;
        i = skip_ws(b, n, i);
        if (i >= n) return fail(s, FS_E_TRUNCATED, n);
        if (b[i] != ':') return fail(s, FS_E_SYNTAX, i);
        i = skip_ws(b, n, i + 1);
        if (i >= n) return fail(s, FS_E_TRUNCATED, n);
        int key = top ? known_key(b, ks, ke, kesc) : -1;
        size_t value = i;
        if (parent != NO_NODE) {
            int node = env_member(s->env, parent, b, ks, ke, kesc);
            if (node >= 0 && (key = s->env->node[node].slot) < 0) {
                /* an object on the way to the envelope's fields */
                fs_value *v = &s->inner[node];
                if (v->kind != FS_ABSENT) return fail(s, FS_E_DUPLICATE, key_offset);
                v->value_offset = i;
                if (b[i] == '{') {
                    v->kind = FS_OBJECT;
                    if (depth + 1 > FS_MAX_DEPTH) return fail(s, FS_E_DEPTH, i);
                    if ((st = scan_object(s, &i, depth + 1, 0, node)) != FS_OK) return st;
                } else {
                    v->kind = b[i] == 'n' ? FS_NULL : FS_OTHER;
                    if ((st = scan_value(s, &i, depth)) != FS_OK) return st;
                }
            }
        }
        if (key >= 0) {
            fs_value *v = &s->frame->keys[key];
            if (v->kind != FS_ABSENT) return fail(s, FS_E_DUPLICATE, key_offset);
            v->value_offset = i;
            if (b[i] == '"') {
                v->kind = FS_STRING;
                v->start = i + 1;
                const uint8_t *q = NULL;
                size_t last;
                if (key == FS_KEY_DATA && (s->guesses & FS_GUESS_LAST)
                        && (last = tail_quote(b, n, i)) != 0) {
                    v->end = last;
                    v->has_escape = 0;
                    s->frame->data_checked = 0;
                    s->frame->data_tentative = FS_GUESS_LAST;
                    *pos = n;   /* the rest is '"}' and whitespace: nothing left to scan */
                    return FS_OK;
                }
                if (key == FS_KEY_DATA)
                    q = memchr(b + i + 1, '"', n - i - 1);
                if (q != NULL && (q == b + i + 1 || q[-1] != '\\')) {
                    /* fast skip: a quote not preceded by a backslash ends the string */
                    v->end = (size_t)(q - b);
                    v->has_escape = 0;
                    s->frame->data_checked = 0;
                    i = v->end + 1;
                } else {
                    if ((st = scan_string(s, &i, &v->start, &v->end, &v->has_escape)) != FS_OK)
                        return st;
                }
                push_token(s, v->start, v->end, key == FS_KEY_DATA ? 'a' : 's');
            } else if (b[i] == 'n') {
                if ((st = scan_literal(s, &i, "null", 4)) != FS_OK) return st;
                v->kind = FS_NULL;
            } else if (b[i] == '-' || (b[i] >= '0' && b[i] <= '9')) {
                v->kind = FS_NUMBER;
                v->start = i;
                if ((st = scan_number(s, &i)) != FS_OK) return st;
                v->end = i;
                push_token(s, v->start, v->end, 'n');
            } else {
                v->kind = FS_OTHER;
                if ((st = scan_value(s, &i, depth)) != FS_OK) return st;
            }
        } else if (i == value) {   /* (not an object node, which scanned its value) */
            if ((st = scan_value(s, &i, depth)) != FS_OK) return st;
        }
        size_t value_end = i;
        if (top) record_member(s, value, value_end, key);
        i = skip_ws(b, n, i);
        if (i >= n) return fail(s, FS_E_TRUNCATED, n);
        if (b[i] == '}') { *pos = i + 1; return FS_OK; }
        if (b[i] != ',') return fail(s, FS_E_SYNTAX, i);
        i = skip_ws(b, n, i + 1);
        if (i >= n) return fail(s, FS_E_TRUNCATED, n);
    }
}

static fs_status scan_array(scanner *s, size_t *pos, int depth)
{
    const uint8_t *b = s->buf;
    size_t n = s->n, i = skip_ws(b, n, *pos + 1);
    fs_status st;
    if (i >= n) return fail(s, FS_E_TRUNCATED, n);
    if (b[i] == ']') { *pos = i + 1; return FS_OK; }
    for (;;) {
        if ((st = scan_value(s, &i, depth)) != FS_OK) return st;
        i = skip_ws(b, n, i);
        if (i >= n) return fail(s, FS_E_TRUNCATED, n);
        if (b[i] == ']') { *pos = i + 1; return FS_OK; }
        if (b[i] != ',') return fail(s, FS_E_SYNTAX, i);
        i = skip_ws(b, n, i + 1);
        if (i >= n) return fail(s, FS_E_TRUNCATED, n);
    }
}

/* *pos is at the first byte of a value (not whitespace, not the end). depth is the
 * nesting of the container holding this value. */
static fs_status scan_value(scanner *s, size_t *pos, int depth)
{
    size_t ks, ke;
    int esc;
    fs_status st;
    size_t start = *pos;
    switch (s->buf[*pos]) {
    case '"':
        if ((st = scan_string(s, pos, &ks, &ke, &esc)) != FS_OK) return st;
        push_token(s, ks, ke, 's');
        return FS_OK;
    case '{':
        if (depth + 1 > FS_MAX_DEPTH) return fail(s, FS_E_DEPTH, *pos);
        return scan_object(s, pos, depth + 1, 0, NO_NODE);
    case '[':
        if (depth + 1 > FS_MAX_DEPTH) return fail(s, FS_E_DEPTH, *pos);
        return scan_array(s, pos, depth + 1);
    case 't': return scan_literal(s, pos, "true", 4);
    case 'f': return scan_literal(s, pos, "false", 5);
    case 'n': return scan_literal(s, pos, "null", 4);
    default:
        if (s->buf[*pos] == '-' || (s->buf[*pos] >= '0' && s->buf[*pos] <= '9')) {
            if ((st = scan_number(s, pos)) != FS_OK) return st;
            push_token(s, start, *pos, 'n');
            return FS_OK;
        }
        return fail(s, FS_E_SYNTAX, *pos);
    }
}

/* ---- the envelope template (see fs_template in frame.h) ---------------------------- */

/* Offset of the first byte where a[0:len] and b[0:len] differ, or len. */
static inline size_t first_difference(const uint8_t *a, const uint8_t *b, size_t len)
{
    size_t i = 0;
#if defined(__SSE2__)
#define FS_EQ16(k) _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(a + (k))), \
                                  _mm_loadu_si128((const __m128i *)(b + (k))))
    for (; i + 64 <= len; i += 64) {   /* one branch per 64 bytes; the 16-byte loop finds it */
        __m128i all = _mm_and_si128(_mm_and_si128(FS_EQ16(i), FS_EQ16(i + 16)),
                                    _mm_and_si128(FS_EQ16(i + 32), FS_EQ16(i + 48)));
        if (_mm_movemask_epi8(all) != 0xFFFF) break;
    }
    for (; i + 16 <= len; i += 16) {
        unsigned eq = (unsigned)_mm_movemask_epi8(FS_EQ16(i));
        if (eq != 0xFFFFu) return i + (size_t)__builtin_ctz(~eq);
    }
#undef FS_EQ16
    if (i < len && len >= 16) {   /* the last 16 bytes, overlapping what is known equal */
        size_t j = len - 16;
        unsigned eq = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(
            _mm_loadu_si128((const __m128i *)(a + j)), _mm_loadu_si128((const __m128i *)(b + j))));
        return eq == 0xFFFFu ? len : j + (size_t)__builtin_ctz(~eq);
    }
#endif
    for (; i < len; i++)
        if (a[i] != b[i]) return i;
    return len;
}

static void template_build(fs_template *t, const scanner *s)
{
    size_t len = s->frame->keys[FS_KEY_DATA].start;
    if (len > FS_TMPL_BYTES || s->members > FS_TMPL_MEMBERS) {
        t->len = 0;
        return;
    }
    memcpy(t->bytes, s->buf, len);
    memcpy(t->member, s->member, s->members * sizeof(fs_tmpl_member));
    memset(t->owner, 0xFF, len);
    for (size_t k = 0; k < s->members; k++)
        memset(t->owner + s->member[k].value, (int)k,
               (size_t)(s->member[k].value_end - s->member[k].value) + 1);
    t->members = (uint32_t)s->members;
    t->frame = *s->frame;
    t->suffix_len = 0;
    t->len = (uint32_t)len;
}

/* The template of a frame whose data string (skipped, no backslash before its end) has
 * members after it: template_build's part up to data, and the bytes from data's closing
 * quote to the end. */
static void template_build_inside(fs_template *t, const scanner *s)
{
    size_t end = s->data_end, suffix = s->n - end;
    if (suffix > FS_TMPL_BYTES || s->after > FS_TMPL_MEMBERS || suffix < 2) {
        t->len = 0;
        return;
    }
    template_build(t, s);
    if (t->len == 0) return;
    memcpy(t->suffix_bytes, s->buf + end, suffix);
    memcpy(t->suffix_member, s->after_member, s->after * sizeof(fs_tmpl_member));
    memset(t->suffix_owner, 0xFF, suffix);
    for (size_t k = 0; k < s->after; k++)
        memset(t->suffix_owner + s->after_member[k].value, (int)k,
               (size_t)(s->after_member[k].value_end - s->after_member[k].value) + 1);
    t->suffix_members = (uint32_t)s->after;
    t->suffix_head = (uint32_t)(s->after ? s->after_member[0].value : suffix);
    t->data_end = (uint32_t)end;
    t->suffix_len = (uint32_t)suffix;
}

/* Whether buf, from base on, is bytes[0:len] of a template span but for the values of
 * some string or number members (owner, member), each still a valid value of the same
 * kind, with at least tail bytes after it. Sets the changed members' known keys in frame
 * (absolute offsets) and, for move_keys, which changed and the shift after each (a byte
 * at span offset x is at buf[base + x + shift]); *shift_out: the shift at the end. */
static int match_span(const uint8_t *bytes, const uint8_t *owner, const fs_tmpl_member *member,
                      size_t len, const uint8_t *buf, size_t n, size_t base, size_t tail,
                      fs_frame *frame, uint32_t *changed, ptrdiff_t *shifts, size_t *changes,
                      ptrdiff_t *shift_out)
{
    size_t p = 0, next = 0;
    ptrdiff_t shift = 0;
    *changes = 0;
    if (n < base + len + tail) return 0;
    for (;;) {
        size_t d = p + first_difference(buf + base + p + shift, bytes + p, len - p);
        if (d == len) break;
        /* a changed value, after the last one (a key or a separator differs: no) */
        if (owner[d] == 0xFF || owner[d] < next) return 0;
        next = owner[d];
        const fs_tmpl_member *m = &member[next];
        size_t v = (size_t)((ptrdiff_t)(base + m->value) + shift), end;
        fs_value *fv = m->key >= 0 ? &frame->keys[m->key] : NULL;
        uint8_t kind = bytes[m->value], c = buf[v];   /* v <= base + d + shift < n */
        if (kind == '"') {
            size_t close, offset;
            int escaped;
            if (c != '"' || check_string(buf, n, v + 1, &close, &escaped, &offset) != FS_OK)
                return 0;
            end = close + 1;
            if (fv) { fv->start = v + 1; fv->end = close; fv->has_escape = escaped; }
        } else if (kind == '-' || (kind >= '0' && kind <= '9')) {
            size_t offset;
            if (!(c == '-' || (c >= '0' && c <= '9'))) return 0;
            end = v;
            if (number_end(buf, n, &end, &offset) != FS_OK) return 0;
            if (fv) { fv->start = v; fv->end = end; }
        } else {
            return 0;
        }
        if (fv) fv->value_offset = v;
        shift = (ptrdiff_t)end - (ptrdiff_t)(base + m->value_end);
        if ((ptrdiff_t)n < (ptrdiff_t)(base + len + tail) + shift) return 0;
        changed[*changes] = (uint32_t)next;
        shifts[(*changes)++] = shift;
        p = m->value_end;
        next++;
    }
    *shift_out = shift;
    return 1;
}

/* The known keys of a matched span that kept their values moved: by delta (where the
 * span starts in buf, less where it started in the template frame) and by the shift in
 * force where each sits (two changes that cancel out still move the keys between them). */
static void move_keys(fs_frame *frame, const fs_tmpl_member *member, size_t members,
                      const uint32_t *changed, const ptrdiff_t *shifts, size_t changes,
                      ptrdiff_t delta)
{
    ptrdiff_t moved = delta;
    for (size_t k = 0, c = 0; k < members; k++) {
        if (c < changes && changed[c] == k) { moved = delta + shifts[c++]; continue; }
        int key = member[k].key;
        if (moved != 0 && key >= 0) {
            fs_value *fv = &frame->keys[key];
            fv->value_offset = (size_t)((ptrdiff_t)fv->value_offset + moved);
            fv->start = (size_t)((ptrdiff_t)fv->start + moved);
            fv->end = (size_t)((ptrdiff_t)fv->end + moved);
        }
    }
}

/* The scan of buf[0:n], if the frame fits the template: its bytes up to data's content
 * (and, for a template of a frame with data inside, from data's end on) are the
 * template's but for the values of some string or number members, each still a valid
 * value of the same kind; 0 otherwise (scan it in full). */
#define FS_SUFFIX_SLACK 16

/* For a template of a frame with data inside: where data's closing quote would be if the
 * suffix kept its length (the steady state: same context, flush id and status), else up
 * to FS_SUFFIX_SLACK bytes either side (a step_time with more digits): a quote with no
 * backslash before it (one there would make it part of the string), followed by the
 * suffix's bytes up to its first value that may change. 0 when there is none. */
static size_t suffix_guess(const fs_template *t, const uint8_t *buf, size_t n, size_t quote)
{
    size_t head = t->suffix_head, at;
    if (n < t->suffix_len) return 0;
    at = n - t->suffix_len;
    for (size_t k = 0; k <= 2 * FS_SUFFIX_SLACK; k++) {   /* at, at - 1, at + 1, at - 2, ... */
        size_t away = (k + 1) / 2, c;
        if (k & 1) {
            if (away >= at) continue;
            c = at - away;
        } else {
            c = at + away;
        }
        if (c > quote && c + head <= n && buf[c] == '"' && buf[c - 1] != '\\'
                && memcmp(buf + c, t->suffix_bytes, head) == 0)
            return c;
    }
    return 0;
}

static int template_match(const fs_template *t, const uint8_t *buf, size_t n, fs_frame *frame,
                          int guesses)
{
    uint32_t changed[FS_TMPL_MEMBERS];   /* the members whose value changed, in order */
    ptrdiff_t shifts[FS_TMPL_MEMBERS];   /* the shift after each of them */
    size_t changes;
    ptrdiff_t shift;
    int guessed = 0;
    *frame = t->frame;
    if (!match_span(t->bytes, t->owner, t->member, t->len, buf, n, 0, 2, frame, changed,
                    shifts, &changes, &shift))
        return 0;
    size_t quote = (size_t)((ptrdiff_t)t->len - 1 + shift), last = 0;
    if (t->suffix_len == 0) {   /* data last: its end is taken on trust (FS_GUESS_LAST) */
        last = tail_quote(buf, n, quote);
        if (last == 0) return 0;
        guessed = FS_GUESS_LAST;
    } else {
        /* (with FS_GUESS_LAST, a frame that ends with '"}' is one the full scan makes
         * its guess on: leave it to that scan, so that the answer is the same) */
        if ((guesses & FS_GUESS_LAST) && tail_quote(buf, n, quote) != 0) return 0;
        /* data inside: its end is the first quote, as in a scan; or guessed */
        if ((guesses & FS_GUESS_SUFFIX) && (last = suffix_guess(t, buf, n, quote)) != 0)
            guessed = FS_GUESS_SUFFIX;
    }
    move_keys(frame, t->member, t->members, changed, shifts, changes, 0);
    if (t->suffix_len != 0) {
        uint32_t after_changed[FS_TMPL_MEMBERS];
        ptrdiff_t after_shifts[FS_TMPL_MEMBERS];
        size_t after_changes;
        ptrdiff_t after_shift;
        for (;;) {
            if (!guessed) {
                const uint8_t *q = memchr(buf + quote + 1, '"', n - quote - 1);
                if (q == NULL || (q != buf + quote + 1 && q[-1] == '\\')) return 0;
                last = (size_t)(q - buf);
            }
            if (match_span(t->suffix_bytes, t->suffix_owner, t->suffix_member, t->suffix_len,
                           buf, n, last, 0, frame, after_changed, after_shifts,
                           &after_changes, &after_shift)
                    && n == last + t->suffix_len + (size_t)after_shift)
                break;
            if (!guessed) return 0;
            /* a suffix that changed length (another context): find the end, with the
             * suffix's keys as the template has them (the failed match may have set some) */
            guessed = 0;
            for (size_t k = 0; k < t->suffix_members; k++)
                if (t->suffix_member[k].key >= 0)
                    frame->keys[t->suffix_member[k].key] = t->frame.keys[t->suffix_member[k].key];
        }
        move_keys(frame, t->suffix_member, t->suffix_members, after_changed, after_shifts,
                  after_changes, (ptrdiff_t)last - (ptrdiff_t)t->data_end);
    }
    fs_value *data = &frame->keys[FS_KEY_DATA];
    data->value_offset = quote;
    data->start = quote + 1;
    data->end = last;
    data->has_escape = 0;
    frame->data_checked = 0;
    frame->data_tentative = guessed;
    return 1;
}

#ifdef FS_TEMPLATE_STATS
unsigned long fs_template_hits[2];
#endif

int fs_confirm_data_end(const uint8_t *buf, const fs_frame *frame)
{
    const fs_value *d = &frame->keys[FS_KEY_DATA];
    return memchr(buf + d->start, '"', d->end - d->start) == NULL;
}

int fs_data_is_last(const uint8_t *buf, size_t n, const fs_frame *frame)
{
    const fs_value *d = &frame->keys[FS_KEY_DATA];
    return d->kind == FS_STRING && d->value_offset < n && buf[d->value_offset] == '"'
           && tail_quote(buf, n, d->value_offset) == d->end;
}

static fs_status scan_frame(const uint8_t *buf, size_t n, fs_frame *frame,
                            size_t *error_offset, int guesses, fs_memo *memo,
                            const fs_env *env, fs_value *inner, fs_env_token *token,
                            uint32_t *tokens)
{
    scanner s = {buf, n, 0, frame, guesses, 0};
    s.data_end = 0;
    s.after = 0;
    s.env = env;
    s.inner = inner;
    s.token = token;
    s.tokens = 0;
    /* only the kinds need clearing: the other fields are read once a kind is set */
    for (int k = 0; k < FS_NKEYS; k++) frame->keys[k].kind = FS_ABSENT;
    frame->object_offset = 0;
    frame->data_checked = 1;
    frame->data_tentative = 0;
    size_t i = skip_ws(buf, n, 0);
    fs_status st;
    if (i >= n || buf[i] != '{') {
        st = FS_E_NOT_OBJECT;
        s.error_offset = i;
    } else {
        frame->object_offset = i;
        st = env == NULL ? scan_object(&s, &i, 1, 1, NO_NODE) : scan_object(&s, &i, 1, 0, -1);
        if (st == FS_OK) {
            i = skip_ws(buf, n, i);
            if (i < n) { st = FS_E_TRAILING; s.error_offset = i; }
        }
    }
    if (st != FS_OK && !frame->data_checked) {
        /* the skipped data string may hold an earlier error than the one found */
        const fs_value *d = &frame->keys[FS_KEY_DATA];
        size_t end, offset;
        int esc;
        if (d->start < s.error_offset) {
            fs_status dst = check_string(buf, n, d->start, &end, &esc, &offset);
            if (dst != FS_OK) { st = dst; s.error_offset = offset; }
        }
    }
    if (st == FS_OK && memo != NULL) {
        if (frame->data_tentative)
            template_build(&memo->tmpl, &s);
        else if (s.data_end != 0 && !frame->data_checked
                 && frame->keys[FS_KEY_DATA].end == s.data_end)
            template_build_inside(&memo->tmpl, &s);
    }
    *error_offset = s.error_offset;
    if (tokens != NULL) *tokens = s.tokens;
    return st;
}

fs_status fs_scan(const uint8_t *buf, size_t n, fs_frame *frame, size_t *error_offset,
                  int guesses, fs_memo *memo)
{
    if (memo != NULL && memo->tmpl.len != 0
            && ((guesses & FS_GUESS_LAST) || memo->tmpl.suffix_len != 0)
            && template_match(&memo->tmpl, buf, n, frame, guesses)) {
#ifdef FS_TEMPLATE_STATS
        fs_template_hits[memo->tmpl.suffix_len != 0]++;
#endif
        *error_offset = 0;   /* as the full scan leaves it */
        return FS_OK;
    }
    return scan_frame(buf, n, frame, error_offset, guesses, memo, NULL, NULL, NULL, NULL);
}

/* ---- the envelope templates (see fs_env_memo in frame.h) ----------------------------- */

/* The last token of t ending at or before offset o, or -1; a token that is empty at o
 * (an empty string, the audio cut out) counts as before o only for an end (ends_at). */
static int8_t place_of(const fs_env_template *t, size_t o, int ends_at)
{
    int8_t k = -1;
    for (uint32_t j = 0; j < t->tokens && t->token[j].end <= o; j++)
        if (ends_at || t->token[j].start < o) k = (int8_t)j;
    return k;
}

static fs_env_place value_place(const fs_env_template *t, const fs_value *v)
{
    fs_env_place p = {-1, -1, -1};
    if (v->kind == FS_ABSENT) return p;
    p.value_offset = place_of(t, v->value_offset, 0);
    p.start = place_of(t, v->start, 0);
    p.end = place_of(t, v->end, 1);
    return p;
}

/* Keep the frame a full scan accepted (its tokens in token[0:tokens]) as a template. */
static void env_template_build(fs_env_memo *memo, const uint8_t *buf, size_t n,
                               const fs_frame *frame, const fs_value *inner, int inners,
                               const fs_env_token *token, uint32_t tokens)
{
    if (tokens > FS_ENV_TOKENS || inners > FS_ENV_TMPL_INNER) return;
    /* the audio string's content is cut out: offsets past it move back by its length */
    size_t cut_at = n, cut = 0;
    for (uint32_t j = 0; j < tokens; j++)
        if (token[j].kind == 'a') { cut_at = token[j].start; cut = token[j].end - token[j].start; }
    if (n - cut > FS_ENV_TMPL_BYTES) return;
    fs_env_template *t = &memo->tmpl[memo->next];
    memo->last = memo->next;
    memo->next = (memo->next + 1) % FS_ENV_TEMPLATES;
#define MOVED(o) ((o) > cut_at ? (o) - cut : (o))
    memcpy(t->bytes, buf, cut_at);
    memcpy(t->bytes + cut_at, buf + cut_at + cut, n - cut_at - cut);
    t->len = (uint32_t)(n - cut);
    t->tokens = tokens;
    for (uint32_t j = 0; j < tokens; j++) {
        t->token[j] = token[j];
        t->token[j].start = (uint32_t)MOVED(token[j].start);
        t->token[j].end = token[j].kind == 'a' ? t->token[j].start : (uint32_t)MOVED(token[j].end);
    }
    t->frame = *frame;
    for (int k = 0; k < FS_NKEYS; k++) {
        fs_value *v = &t->frame.keys[k];
        if (v->kind == FS_ABSENT) continue;
        v->value_offset = MOVED(v->value_offset);
        v->start = MOVED(v->start);
        v->end = k == FS_KEY_DATA && v->kind == FS_STRING ? v->start : MOVED(v->end);
    }
    t->inners = (uint32_t)inners;
    for (int k = 0; k < inners; k++) {
        t->inner[k] = inner[k];
        t->inner[k].value_offset = MOVED(inner[k].value_offset);
    }
#undef MOVED
    for (int k = 0; k < FS_NKEYS; k++) t->key_place[k] = value_place(t, &t->frame.keys[k]);
    for (int k = 0; k < inners; k++) t->inner_place[k] = value_place(t, &t->inner[k]);
}

/* a[0:len] == b[0:len], inline: the fixed stretches between a template's tokens are a
 * few bytes to a few dozen, where a call to memcmp costs more than the compare */
static inline int same_bytes(const uint8_t *a, const uint8_t *b, size_t len)
{
    while (len >= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) return 0;
        a += 8;
        b += 8;
        len -= 8;
    }
    while (len > 0) {
        if (*a++ != *b++) return 0;
        len--;
    }
    return 1;
}

/* Whether buf[0:n] is the template with other tokens; if so, its fields. guess: where
 * the audio string ends is not searched for (a memchr over all of it) but assumed where
 * the rest would start if every token after it kept its length (FS_GUESS_SUFFIX: the
 * caller confirms it, or a successful decode of the span does). */
static int env_template_match(const fs_env_template *t, const uint8_t *buf, size_t n,
                              fs_frame *frame, fs_value *inner, int guess)
{
    int64_t moved[FS_ENV_TOKENS];   /* how far each token's end moved */
    size_t at = 0, from = 0;        /* in the template, in the frame */
    size_t data_start = 0, data_end = 0;
    int has_data = 0;
    for (uint32_t j = 0; j < t->tokens; j++) {
        const fs_env_token *k = &t->token[j];
        size_t fixed = k->start - at;
        if (from + fixed > n || !same_bytes(t->bytes + at, buf + from, fixed)) return 0;
        from += fixed;
        size_t start = from, end;
        if (k->kind == 'n') {
            size_t ignored;
            if (from >= n || (buf[from] != '-' && (uint8_t)(buf[from] - '0') > 9)) return 0;
            end = from;
            if (number_end(buf, n, &end, &ignored) != FS_OK) return 0;
        } else if (k->kind == 'a') {
            if (guess) {
                size_t rest = t->len - k->end;
                if (n < from + rest) return 0;
                end = n - rest;
                if (end != from && buf[end - 1] == '\\') return 0;
            } else {
                const uint8_t *q = memchr(buf + from, '"', n - from);
                if (q == NULL || (q != buf + from && q[-1] == '\\')) return 0;
                end = (size_t)(q - buf);
            }
            data_start = start;
            data_end = end;
            has_data = 1;
        } else {
            end = skip_plain(buf, n, from);
            if (end >= n || buf[end] != '"') return 0;
        }
        moved[j] = (int64_t)end - (int64_t)k->end;
        from = end;
        at = k->end;
    }
    if (n - from != t->len - at || !same_bytes(t->bytes + at, buf + from, n - from)) return 0;
    /* the template's fields, moved (field by field: most slots are absent, and a copy of
     * the whole fs_frame costs more than the few present ones) */
    frame->object_offset = t->frame.object_offset;
    frame->data_checked = t->frame.data_checked;
    frame->data_tentative = t->frame.data_tentative;
#define PLACED(o, k) ((size_t)((int64_t)(o) + ((k) < 0 ? 0 : moved[(k)])))
    for (int k = 0; k < FS_NKEYS; k++) {
        fs_value *v = &frame->keys[k];
        const fs_value *was = &t->frame.keys[k];
        const fs_env_place *p = &t->key_place[k];
        v->kind = was->kind;
        if (was->kind == FS_ABSENT) continue;
        v->value_offset = PLACED(was->value_offset, p->value_offset);
        v->start = PLACED(was->start, p->start);
        v->end = PLACED(was->end, p->end);
        v->has_escape = 0;   /* (a string's token is plain; others do not read it) */
    }
    for (uint32_t k = 0; k < t->inners; k++) {
        inner[k].kind = t->inner[k].kind;
        if (inner[k].kind != FS_ABSENT)
            inner[k].value_offset = PLACED(t->inner[k].value_offset,
                                           t->inner_place[k].value_offset);
    }
#undef PLACED
    if (has_data) {   /* (the audio token is the data slot's value) */
        frame->keys[FS_KEY_DATA].start = data_start;
        frame->keys[FS_KEY_DATA].end = data_end;
        frame->data_checked = 0;
        frame->data_tentative = guess ? FS_GUESS_SUFFIX : 0;
    }
    return 1;
}

#ifdef FS_TEMPLATE_STATS
unsigned long fs_env_template_hits = 0;
#endif

fs_status fs_scan_env(const uint8_t *buf, size_t n, fs_frame *frame, fs_value *inner,
                      size_t *error_offset, const fs_env *env, fs_env_memo *memo)
{
    if (memo != NULL && env->count <= FS_ENV_TMPL_INNER) {
        for (uint32_t k = 0; k < FS_ENV_TEMPLATES; k++) {
            uint32_t which = (memo->last + k) % FS_ENV_TEMPLATES;
            const fs_env_template *t = &memo->tmpl[which];
            if (t->len != 0 && t->inners == (uint32_t)env->count
                    && (env_template_match(t, buf, n, frame, inner, 1)
                        || env_template_match(t, buf, n, frame, inner, 0))) {
                memo->last = which;
#ifdef FS_TEMPLATE_STATS
                fs_env_template_hits++;
#endif
                *error_offset = 0;
                return FS_OK;
            }
        }
    }
    fs_env_token token[FS_ENV_TOKENS];
    uint32_t tokens = 0;
    for (int k = 0; k < env->count; k++) inner[k].kind = FS_ABSENT;
    fs_status st = scan_frame(buf, n, frame, error_offset, 0, NULL, env, inner,
                              memo != NULL ? token : NULL, &tokens);
    if (st == FS_OK && memo != NULL)
        env_template_build(memo, buf, n, frame, inner, env->count, token, tokens);
    return st;
}
