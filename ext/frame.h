/* Frame scanner: validates one JSON text (RFC 8259, UTF-8) and records where the
 * top-level fields flushsink needs are. Knows nothing about Python.
 *
 * The top-level "data" string is the only large value in a frame. The scanner skips
 * it with memchr and leaves its content unchecked (frame->data_checked == 0): the
 * base64 decoder validates it for free on the hot path, and fs_check_string() does
 * the JSON check when a decision depends on it. When the scan itself fails after
 * a skipped data value, the data is checked first so that the earliest error wins.
 */
#ifndef FLUSHSINK_FRAME_H
#define FLUSHSINK_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FS_MAX_DEPTH 64

/* The names the Python side shows, each listed once here with its C name (X-macros):
 * the enums below and the tables of names in frame.c are made from these lists, and the
 * compiled core reads the tables (fs_status_codes, fs_key_names, fs_type_names), so no
 * other file copies their order. "" marks an entry without a name. */

/* Scan results: FrameError codes (flushsink.errors.FRAME_ERROR_REASONS explains each). */
#define FS_STATUS_LIST(X) \
    X(FS_OK, "") \
    X(FS_E_NOT_OBJECT, "not_object") \
    X(FS_E_TRUNCATED, "truncated") \
    X(FS_E_SYNTAX, "syntax") \
    X(FS_E_UTF8, "utf8") \
    X(FS_E_CONTROL, "control") \
    X(FS_E_ESCAPE, "escape") \
    X(FS_E_SURROGATE, "surrogate") \
    X(FS_E_NUMBER, "number") \
    X(FS_E_DEPTH, "depth") \
    X(FS_E_TRAILING, "trailing") \
    X(FS_E_DUPLICATE, "duplicate")

/* The members the scanner records (flushsink._common.SLOTS, in the same order): Cartesia's
 * top-level key names, then the slots only an envelope names (fs_scan_env): "" marks them,
 * so that fs_scan never records them. */
#define FS_KEY_LIST(X) \
    X(FS_KEY_TYPE, "type") \
    X(FS_KEY_CONTEXT_ID, "context_id") \
    X(FS_KEY_FLUSH_ID, "flush_id") \
    X(FS_KEY_DATA, "data") \
    X(FS_KEY_WORD_TIMESTAMPS, "word_timestamps") \
    X(FS_KEY_PHONEME_TIMESTAMPS, "phoneme_timestamps") \
    X(FS_KEY_FINAL, "") \
    X(FS_KEY_ERROR, "") \
    X(FS_KEY_CONTEXT_FALLBACK, "")

/* Frame types: the "type" values the sink knows, and what fs_frame_type says otherwise
 * (NONE: no type or null; UNKNOWN: a string it does not know; BAD: not a string). */
#define FS_TYPE_LIST(X) \
    X(FS_TYPE_NONE, "") \
    X(FS_TYPE_CHUNK, "chunk") \
    X(FS_TYPE_FLUSH_DONE, "flush_done") \
    X(FS_TYPE_DONE, "done") \
    X(FS_TYPE_ERROR, "error") \
    X(FS_TYPE_TIMESTAMPS, "timestamps") \
    X(FS_TYPE_PHONEME_TIMESTAMPS, "phoneme_timestamps") \
    X(FS_TYPE_UNKNOWN, "") \
    X(FS_TYPE_BAD, "")

#define FS_ENUM_MEMBER(id, name) id,
typedef enum { FS_STATUS_LIST(FS_ENUM_MEMBER) FS_NSTATUS } fs_status;
typedef enum { FS_KEY_LIST(FS_ENUM_MEMBER) FS_NKEYS } fs_key;
typedef enum { FS_TYPE_LIST(FS_ENUM_MEMBER) FS_NTYPES } fs_type;

/* Their names, indexed by the enums ("" for the entries without one). */
extern const char *const fs_status_codes[FS_NSTATUS];
extern const char *const fs_key_names[FS_NKEYS];
extern const char *const fs_type_names[FS_NTYPES];

/* FS_OBJECT: only for the objects on an envelope's paths (fs_scan_env's inner values);
 * every other object, array, true or false is FS_OTHER. */
typedef enum { FS_ABSENT = 0, FS_NULL, FS_STRING, FS_NUMBER, FS_OTHER, FS_OBJECT } fs_kind;

typedef struct {
    fs_kind kind;
    int has_escape;        /* strings: a backslash occurs in the content */
    size_t value_offset;   /* where the value starts (its quote for strings) */
    size_t start, end;     /* strings: content between the quotes; numbers: the text */
} fs_value;

typedef struct {
    fs_value keys[FS_NKEYS];
    size_t object_offset;  /* offset of the top-level '{' */
    int data_checked;      /* 0 when the data string's content was skipped unchecked */
    int data_tentative;    /* 0, or the FS_GUESS_* by which data's end was assumed (fs_scan) */
} fs_frame;

/* The envelope of the last frame that ended with its data string (Cartesia's layout):
 * every byte before data's content, and what the scan found there. A server repeats its
 * envelope ("type":"chunk", the context id, "status_code":206, ...) but for a few values
 * (step_time, now and then flush_id or the context id). A frame that repeats those bytes,
 * except inside number or string values of the members, needs only the changed values
 * validated: the rest of the verdict is the template's. Sound because the scanner's
 * verdict on one top-level member, from the quote of its key to the ',' after its value,
 * depends on those bytes alone (each step stops at a byte inside them, and they are
 * validated as a unit at depth 1), and the keys, hence the duplicate check, are the
 * template's. Built by every full scan that ends with data; a frame it does not fit is
 * scanned in full. */
#define FS_TMPL_BYTES 448
#define FS_TMPL_MEMBERS 16

typedef struct {
    uint16_t value, value_end;   /* the member's value, buf[value:value_end] */
    int8_t key;                  /* FS_KEY_* or -1 */
    uint8_t unused;
} fs_tmpl_member;

typedef struct {
    uint32_t len;          /* bytes up to data's content (past its opening quote); 0: none */
    uint32_t members;      /* the members before data */
    fs_frame frame;        /* the scan's result for those bytes (data: where it starts) */
    fs_tmpl_member member[FS_TMPL_MEMBERS];
    uint8_t owner[FS_TMPL_BYTES];   /* the member whose value spans an offset (its end
                                       included), or 0xFF */
    uint8_t bytes[FS_TMPL_BYTES];
    /* A frame whose data is not its last member ({"type":..,"data":..,"context_id":..}):
     * the same again for the bytes from data's closing quote to the frame's end, offsets
     * counted from that quote. suffix_len 0: the template is of a frame with data last,
     * used with FS_GUESS_LAST; else of one with data inside, whose end is then found
     * with one memchr, as the full scan's fast skip does, or with FS_GUESS_SUFFIX assumed
     * where the suffix would start if it kept its length (with FS_GUESS_LAST only for a
     * frame on which the full scan would not guess: one that does not end with '"}'). */
    uint32_t suffix_len, suffix_members;
    uint32_t suffix_head;  /* the suffix's bytes before its first value that may change */
    uint32_t data_end;     /* the template frame's closing quote of data */
    fs_tmpl_member suffix_member[FS_TMPL_MEMBERS];
    uint8_t suffix_owner[FS_TMPL_BYTES];
    uint8_t suffix_bytes[FS_TMPL_BYTES];
} fs_template;

/* What the scanner keeps from frame to frame of a stream: the template. (A memory of
 * single members, for frames the template does not fit, saved 0.3-0.8% of the
 * instructions on streams with flush_done or timestamps frames and nothing measurable in
 * time: it was taken out, issue 13.) */
typedef struct {
    fs_template tmpl;
} fs_memo;

/* Ask for the first kilobyte of a frame at once. A frame that was received a while ago
 * (queued, or one of many in a batch) is no longer in the nearest caches: the loads of
 * its data then overlap the scan of its envelope instead of following it (measured: 10
 * of 160 ns for a 20 ms chunk at 44.1 kHz read from L3); further on, the decoder's
 * sequential reads keep the hardware prefetcher ahead. */
static inline void fs_prefetch(const uint8_t *buf, size_t n)
{
#if defined(__GNUC__) || defined(__clang__)
    size_t end = n < 1024 ? n : 1024;   /* more costs more than it saves (measured) */
    for (size_t k = 64; k < end; k += 64) __builtin_prefetch(buf + k, 0, 3);
#else
    (void)buf;
    (void)n;
#endif
}

/* Guesses fs_scan may make about where the data string ends, each right exactly when
 * the span it assumes holds no unescaped quote, which a successful base64 decode of the
 * span proves for free (a quote, or a backslash, is not base64): */
enum {
    /* a top-level data string followed by nothing but the frame's closing '"}' (Cartesia
     * puts data last) is not searched for its end: the last quote is taken as its end */
    FS_GUESS_LAST = 1,
    /* a frame that fits the memo's template of a frame with members after data: data
     * ends where the template's suffix would start if every member after data kept its
     * length (the same context, flush id and status: the steady state), when the bytes
     * from there on fit that suffix; saves a memchr over data (a 500 ms chunk: 60 kB) */
    FS_GUESS_SUFFIX = 2,
};

/* Scan buf[0:n]. On error returns the status and sets *error_offset.
 *
 * guesses: the FS_GUESS_* the scan may make. When it made one, frame->data_tentative says
 * which; anything but a successful decode of the span must then confirm it first with
 * fs_confirm_data_end and, when that says no, scan again without that guess.
 *
 * memo (may be NULL) is read and updated: pass the same one for the frames of a stream,
 * zero-initialised at first. The result is the same with or without it, once a guess is
 * confirmed (FS_GUESS_SUFFIX needs the memo: without it the end is found exactly); its
 * template of a data-last frame is only used with FS_GUESS_LAST. */
fs_status fs_scan(const uint8_t *buf, size_t n, fs_frame *frame, size_t *error_offset,
                  int guesses, fs_memo *memo);

#ifdef FS_TEMPLATE_STATS
/* Frames the template answered: [0] data last (FS_GUESS_LAST), [1] data inside; and the
 * frames an envelope's templates answered. Built only into tests/scan_memo.c, which
 * checks that each kind is exercised. */
extern unsigned long fs_template_hits[2];
extern unsigned long fs_env_template_hits;
#endif

/* An envelope (flushsink.envelopes.Envelope) as the scanner walks it: the names on its
 * paths as a tree. A node is a member name of the object its parent node's value is (-1:
 * the frame itself); a node with a slot is a field the scanner records in
 * frame->keys[slot], one without is an object on the way to fields, whose value it
 * records in inner[node]. Names are ASCII (escaped keys are unescaped to compare). */
#define FS_ENV_NODES 128
#define FS_ENV_NAME_MAX 64

typedef struct {
    uint8_t name[FS_ENV_NAME_MAX];
    uint8_t len;
    int8_t slot;       /* FS_KEY_*, or -1 for an object on the way */
    int16_t parent;    /* the node whose object holds this member, -1 for the frame */
} fs_env_node;

typedef struct {
    int count;
    fs_env_node node[FS_ENV_NODES];
} fs_env;

/* The frames of an envelope a stream repeats, as templates (fs_scan_env's memo). A
 * template is a frame the full scan accepted, with its audio string's content cut out,
 * and its value tokens in order: the content of each string value (not the keys) and each
 * number, at any depth. A frame that is the template's bytes with other tokens in their
 * places (plain string content without escapes, control or non-ASCII bytes; numbers of
 * the JSON grammar; any audio content, skipped unchecked as the full scan skips it) is
 * valid JSON of the same structure, keys and literals, so the full scan would accept it
 * with the same fields: the template's, moved by the lengths of the tokens before each
 * (and its strings without escapes). Most frames of a stream differ from the one before
 * only in such tokens (an event id, a sequence number, a timestamp, the audio); a few
 * shapes interleave (audio and transcript deltas), hence a few templates, the last one
 * used tried first. Sound for the same reason as fs_template; frames that do not fit are
 * scanned in full (and become a template in turn). */
#define FS_ENV_TOKENS 48
#define FS_ENV_TMPL_BYTES 1024
#define FS_ENV_TMPL_INNER 16
#define FS_ENV_TEMPLATES 4

typedef struct {
    uint32_t start, end;   /* in the template's bytes: a string's content, or a number */
    uint8_t kind;          /* 's' a string value, 'n' a number, 'a' the audio string */
} fs_env_token;

typedef struct {
    int8_t value_offset, start, end;   /* the last token ending at or before each, or -1 */
} fs_env_place;

typedef struct {
    uint32_t len;          /* bytes kept; 0: an empty template */
    uint32_t tokens;
    uint32_t inners;       /* env->count when built */
    fs_env_token token[FS_ENV_TOKENS];
    fs_frame frame;        /* the scan's fields, in the template's offsets */
    fs_value inner[FS_ENV_TMPL_INNER];
    fs_env_place key_place[FS_NKEYS];
    fs_env_place inner_place[FS_ENV_TMPL_INNER];
    uint8_t bytes[FS_ENV_TMPL_BYTES];
} fs_env_template;

typedef struct {
    fs_env_template tmpl[FS_ENV_TEMPLATES];
    uint32_t last, next;   /* the template used last, and the next one to replace */
} fs_env_memo;

/* fs_scan for an envelope: validates buf[0:n] the same way and records env's fields at
 * any depth, and in inner[k] (env->count entries) the value of each object node k (its
 * kind FS_OBJECT when it is an object, FS_ABSENT when the frame has none). A field or
 * object node seen twice in one object is FS_E_DUPLICATE. The data slot's string is
 * skipped unchecked as fs_scan does (frame->data_checked). memo (may be NULL;
 * zero-initialised at first) holds the stream's templates: the result is the same with
 * or without it, once a guess is confirmed: a frame a template answers may have
 * data_tentative FS_GUESS_SUFFIX (the audio's end assumed where the template's rest
 * starts), which fs_confirm_data_end or a successful decode of the span must confirm;
 * when it is not, scan the frame again without the memo. */
fs_status fs_scan_env(const uint8_t *buf, size_t n, fs_frame *frame, fs_value *inner,
                      size_t *error_offset, const fs_env *env, fs_env_memo *memo);

/* Validate the string whose content starts at buf[start] (just past the opening quote):
 * escapes, surrogate pairs, control bytes, UTF-8. On success *end is the offset of the
 * closing quote and *has_escape says whether a backslash occurs. */
fs_status fs_check_string(const uint8_t *buf, size_t n, size_t start, size_t *end,
                          int *has_escape, size_t *error_offset);

/* After a scan that set frame->data_tentative: 1 when the data string really ends where
 * the scan assumed (no quote inside the span), 0 when it did not (FS_GUESS_LAST: data was
 * not the last member after all, a layout such as {"type":..,"data":..,"context_id":..}):
 * the frame must then be scanned again without that guess. One memchr over the data. */
int fs_confirm_data_end(const uint8_t *buf, const fs_frame *frame);

/* After a full scan: 1 when the frame's data string is its last member (only whitespace
 * and the closing brace follow it), the layout FS_GUESS_LAST is made for. */
int fs_data_is_last(const uint8_t *buf, size_t n, const fs_frame *frame);

/* The frame's "type": NONE when absent or null, BAD when not a string, UNKNOWN for a
 * string flushsink does not know (escaped spellings are unescaped first). */
fs_type fs_frame_type(const uint8_t *buf, const fs_frame *frame);

/* The flush_id label of a number value: 0 and *label set when it is an integer in
 * [0, 2**62] written without sign, fraction or exponent; -1 otherwise. (Inline: every
 * chunk frame asks.) */
static inline int fs_label(const uint8_t *buf, const fs_value *value, int64_t *label)
{
    size_t len = value->end - value->start;
    if (value->kind != FS_NUMBER || len == 0 || len > 19) return -1;
    uint64_t result = 0;
    for (size_t i = value->start; i < value->end; i++) {
        if ((uint8_t)(buf[i] - '0') > 9) return -1;
        result = result * 10 + (uint64_t)(buf[i] - '0');
    }
    if (result > ((uint64_t)1 << 62)) return -1;
    *label = (int64_t)result;
    return 0;
}

/* Unescape a validated string content buf[start:end] into one byte per character:
 * ASCII characters as themselves, any other character as 0x80 (never valid base64).
 * offsets[i] is the offset in buf where character i's text starts; offsets[count] = end.
 * chars and offsets need room for end - start (+1) entries. Returns count. */
size_t fs_unescape_chars(const uint8_t *buf, size_t start, size_t end,
                         uint8_t *chars, size_t *offsets);

#endif
