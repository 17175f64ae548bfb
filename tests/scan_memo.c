/* The scanner with and without its memory of earlier frames (fs_memo: the envelope
 * template; fs_env_memo: an envelope's templates, for fs_scan_env) must give the same
 * answer for every frame: status, error offset and every field of fs_frame (and of the
 * envelope's objects on the way) a caller reads. Frames are near-copies of a few
 * server-like bases, mutated a byte or a few at a time (replaced, inserted, deleted, cut),
 * fed in a stream so that the memory always holds something close. Run by
 * tests/test_scan_memo.py (built with the sanitizers where the compiler has them).
 *
 * usage: scan_memo ITERATIONS SEED; exit status 1 and the frame printed on a mismatch.
 */
#include "frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t state;
#ifdef FS_TEMPLATE_STATS
static unsigned long suffix_guesses;   /* data's end guessed from a template's suffix */
static unsigned long env_guesses;      /* the same, by an envelope's template */
#endif

static uint64_t next_random(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static const char *const bases[] = {
    "{\"type\": \"chunk\", \"context_id\": \"ctx-17\", \"status_code\": 206, \"done\": false, "
    "\"step_time\": 41.7, \"flush_id\": 12, \"data\": \"QUJD\"}",
    "{\"type\":\"chunk\",\"done\":false,\"status_code\":206,\"step_time\":23.4,\"flush_id\":1,"
    "\"context_id\":\"abc\",\"data\":\"QUJDRA==\"}",
    "{\"seq\":9.5,\"type\":\"chunk\",\"context_id\":\"ctx\",\"flush_id\":9,\"data\":\"AAAA\"}",
    " {\"x\":-0.5,\"type\":\"chunk\",\"context_id\":\"a\\u00e9b\",\"y\":\"\",\"flush_id\":null,"
    "\"data\":\"\"} ",
    "{\"type\":\"chunk\",\"context_id\":\"c\",\"n\":[1,2],\"data\":\"AAAA\"\n}\n",
    "{\"k0\":0,\"k1\":7,\"k2\":14,\"k3\":21,\"k4\":28,\"k5\":35,\"k6\":42,\"k7\":49,\"k8\":56,"
    "\"k9\":63,\"k10\":70,\"k11\":77,\"k12\":84,\"k13\":91,\"k14\":98,\"type\":\"chunk\","
    "\"context_id\":\"c\",\"flush_id\":3,\"data\":\"QUJD\"}",
    "{\"type\":\"chunk\",\"context_id\":\"a\",\"t\\u0079pe\":\"x\",\"data\":\"QUJD\"}",
    "{\"d\\u0061ta2\":1,\"type\":\"ch\\u0075nk\",\"context_id\":\"z\",\"n\":-12.5e-3,"
    "\"data\":\"QUJD\"}",
    /* data inside: Cartesia's documented order, data first, data in the middle */
    "{\"type\":\"chunk\",\"data\":\"QUJDRA==\",\"done\":false,\"status_code\":206,"
    "\"step_time\":41.7,\"flush_id\":12,\"context_id\":\"ctx-17\"}",
    "{\"data\": \"QUJD\", \"type\": \"chunk\", \"context_id\": \"abc\", \"flush_id\": 1} \n",
    "{\"type\":\"chunk\",\"context_id\":\"a\",\"data\":\"AAAA\",\"x\":\"\\u00e9\","
    "\"n\":[1,{\"k\":null}],\"flush_id\":3}",
    /* short data just before a short suffix: mutations land where the suffix guess looks */
    "{\"data\":\"QQ==\",\"flush_id\":2,\"context_id\":\"c\"}",
    "{\"type\":\"chunk\",\"data\":\"\",\"context_id\":\"c\"}",
};
#define N_BASES (sizeof(bases) / sizeof(bases[0]))

/* bytes that matter to the grammar, to UTF-8 and to base64 */
static const char alphabet[] = "0123456789\"\\,: -.eE+{}[]nulatrufs\x80\xc3\xa9\x01\tAQ=/";

/* fs_scan as its callers use it: a guess about data's end that fs_confirm_data_end does
 * not confirm is scanned again without it (a successful decode of the span is a
 * confirmation too, and implies this one: no quote is base64) */
static fs_status scan(const uint8_t *buf, size_t n, fs_frame *frame, size_t *offset,
                      int guesses, fs_memo *memo)
{
    fs_status st = fs_scan(buf, n, frame, offset, guesses, memo);
    if (st == FS_OK && frame->data_tentative && !fs_confirm_data_end(buf, frame))
        st = fs_scan(buf, n, frame, offset, 0, memo);
    return st;
}

static int same_scan(const uint8_t *frame, size_t n, fs_memo *memo, int guesses,
                     long iteration)
{
    uint8_t *buf = malloc(n ? n : 1);   /* exactly n bytes: the sanitizer sees overreads */
    memcpy(buf, frame, n);
    fs_frame plain, remembered;
    size_t plain_offset = 12345, remembered_offset = 54321;
    memset(&plain, 0xAB, sizeof plain);
    memset(&remembered, 0xCD, sizeof remembered);
    fs_status a = scan(buf, n, &plain, &plain_offset, guesses, NULL);
    fs_status b = scan(buf, n, &remembered, &remembered_offset, guesses, memo);
    int bad = a != b || plain_offset != remembered_offset;
    if (a == FS_OK && b == FS_OK) {
        /* the same guess, but for FS_GUESS_SUFFIX, which only the memory can make (where
         * the scan without it finds data's end exactly) */
        bad |= plain.object_offset != remembered.object_offset
            || plain.data_checked != remembered.data_checked
            || plain.data_tentative
                != (remembered.data_tentative == FS_GUESS_SUFFIX ? 0 : remembered.data_tentative);
#ifdef FS_TEMPLATE_STATS
        suffix_guesses += remembered.data_tentative == FS_GUESS_SUFFIX;
#endif
        for (int k = 0; k < FS_NKEYS; k++) {
            const fs_value *p = &plain.keys[k], *r = &remembered.keys[k];
            if (p->kind != r->kind) { bad = 1; continue; }
            if (p->kind == FS_ABSENT) continue;
            bad |= p->value_offset != r->value_offset;
            if (p->kind == FS_STRING || p->kind == FS_NUMBER)
                bad |= p->start != r->start || p->end != r->end;
            if (p->kind == FS_STRING) bad |= p->has_escape != r->has_escape;
        }
    }
    if (bad) {
        printf("mismatch at iteration %ld (guesses %d): status %d/%d, offset %zu/%zu, "
               "frame [", iteration, guesses, (int)a, (int)b, plain_offset, remembered_offset);
        fwrite(buf, 1, n, stdout);
        printf("]\n");
    }
    free(buf);
    return bad;
}

/* ---- fs_scan_env: each built-in envelope and a deep one, as a tree of names ---------- */

typedef struct { const char *name; int slot; int parent; } node_spec;

static const node_spec twilio[] = {{"event", FS_KEY_TYPE, -1}, {"streamSid", FS_KEY_CONTEXT_ID, -1},
                                   {"media", -1, -1}, {"payload", FS_KEY_DATA, 2}, {0, 0, 0}};
static const node_spec openai[] = {{"type", FS_KEY_TYPE, -1}, {"response_id", FS_KEY_CONTEXT_ID, -1},
                                   {"delta", FS_KEY_DATA, -1}, {0, 0, 0}};
static const node_spec eleven[] = {{"audio", FS_KEY_DATA, -1}, {"contextId", FS_KEY_CONTEXT_ID, -1},
                                   {"isFinal", FS_KEY_FINAL, -1}, {"message", FS_KEY_ERROR, -1},
                                   {0, 0, 0}};
static const node_spec deep[] = {{"meta", -1, -1}, {"kind", FS_KEY_TYPE, 0}, {"session", -1, 0},
                                 {"id", FS_KEY_CONTEXT_ID, 2}, {"body", -1, -1},
                                 {"part", FS_KEY_FLUSH_ID, 4}, {"audio", -1, 4},
                                 {"hex", FS_KEY_DATA, 6}, {0, 0, 0}};

static const struct { const node_spec *nodes; const char *frame; } env_bases[] = {
    {twilio, "{\"event\":\"media\",\"sequenceNumber\":\"3\",\"media\":{\"track\":\"outbound\","
             "\"chunk\":\"1\",\"timestamp\":\"5\",\"payload\":\"QUJD\"},\"streamSid\":\"MZ1\"}"},
    {twilio, "{\"media\": {\"payload\": \"\", \"n\": [1, -2.5e3, \"\"]}, \"event\": \"media\", "
             "\"streamSid\": \"\"}"},
    {openai, "{\"type\":\"response.output_audio.delta\",\"event_id\":\"event_9f\","
             "\"response_id\":\"resp_1\",\"item_id\":\"item_2\",\"output_index\":0,"
             "\"content_index\":0,\"delta\":\"QUJDRA==\"}"},
    {openai, "{\"type\":\"response.output_audio_transcript.delta\",\"response_id\":\"r\","
             "\"delta\":\"hi \\u00e9\",\"x\":null,\"y\":true}"},
    {eleven, "{\"audio\":\"QUJD\",\"isFinal\":null,\"normalizedAlignment\":{\"chars\":[\"a\",\" \"],"
             "\"charStartTimesMs\":[0,12],\"charsDurationsMs\":[12,30]},\"contextId\":\"c\"}"},
    {eleven, "{\"isFinal\":true,\"contextId\":\"c-2\"}"},
    {deep, "{\"meta\":{\"kind\":\"audio\",\"session\":{\"id\":\"s1\",\"t\":7}},"
           "\"body\":{\"part\":2,\"audio\":{\"hex\":\"0100ff\"}},\"z\":[{\"a\":\"\"}]}"},
    {deep, "{\"body\":{\"audio\":null,\"part\":0},\"meta\":{\"session\":{\"id\":\"\"},"
           "\"kind\":\"part_end\"}}"},
};
#define N_ENV_BASES (sizeof(env_bases) / sizeof(env_bases[0]))

static void make_env(fs_env *env, const node_spec *spec)
{
    memset(env, 0, sizeof *env);
    for (; spec->name != NULL; spec++) {
        fs_env_node *node = &env->node[env->count++];
        node->len = (uint8_t)strlen(spec->name);
        memcpy(node->name, spec->name, node->len);
        node->slot = (int8_t)spec->slot;
        node->parent = (int16_t)spec->parent;
    }
}

static int same_values(const fs_value *p, const fs_value *r)
{
    if (p->kind != r->kind) return 0;
    if (p->kind == FS_ABSENT) return 1;
    if (p->value_offset != r->value_offset) return 0;
    if ((p->kind == FS_STRING || p->kind == FS_NUMBER) && (p->start != r->start || p->end != r->end))
        return 0;
    return p->kind != FS_STRING || p->has_escape == r->has_escape;
}

static int same_env_scan(const uint8_t *frame, size_t n, const fs_env *env, fs_env_memo *memo,
                         long iteration)
{
    uint8_t *buf = malloc(n ? n : 1);
    memcpy(buf, frame, n);
    fs_frame plain, remembered;
    fs_value plain_inner[FS_ENV_NODES], remembered_inner[FS_ENV_NODES];
    size_t plain_offset = 12345, remembered_offset = 54321;
    memset(&plain, 0xAB, sizeof plain);
    memset(&remembered, 0xCD, sizeof remembered);
    memset(plain_inner, 0xAB, sizeof plain_inner);
    memset(remembered_inner, 0xCD, sizeof remembered_inner);
    fs_status a = fs_scan_env(buf, n, &plain, plain_inner, &plain_offset, env, NULL);
    fs_status b = fs_scan_env(buf, n, &remembered, remembered_inner, &remembered_offset, env, memo);
    /* as the callers do: a guess of the audio's end that is not confirmed is scanned again */
    if (b == FS_OK && remembered.data_tentative && !fs_confirm_data_end(buf, &remembered))
        b = fs_scan_env(buf, n, &remembered, remembered_inner, &remembered_offset, env, NULL);
#ifdef FS_TEMPLATE_STATS
    env_guesses += b == FS_OK && remembered.data_tentative == FS_GUESS_SUFFIX;
#endif
    int bad = a != b || plain_offset != remembered_offset;
    if (a == FS_OK && b == FS_OK) {
        bad |= plain.object_offset != remembered.object_offset
            || plain.data_checked != remembered.data_checked
            || plain.data_tentative
                != (remembered.data_tentative == FS_GUESS_SUFFIX ? 0 : remembered.data_tentative);
        for (int k = 0; k < FS_NKEYS; k++) bad |= !same_values(&plain.keys[k], &remembered.keys[k]);
        for (int k = 0; k < env->count; k++)
            if (env->node[k].slot < 0) bad |= !same_values(&plain_inner[k], &remembered_inner[k]);
    }
    if (bad) {
        printf("envelope mismatch at iteration %ld: status %d/%d, offset %zu/%zu, frame [",
               iteration, (int)a, (int)b, plain_offset, remembered_offset);
        fwrite(buf, 1, n, stdout);
        printf("]\n");
    }
    free(buf);
    return bad;
}

/* Replace, insert or delete a byte anywhere, or cut the frame there, the way a broken
 * server does; like_a_server: half the time change a token instead, the way a working one
 * does (a digit for a digit, a letter for a letter, one more or less), and cut rarely. */
static size_t mutate(uint8_t *frame, size_t n, size_t cap, int like_a_server)
{
    size_t pos = next_random() % (n + 1);
    uint8_t c = (uint8_t)alphabet[next_random() % (sizeof alphabet - 1)];
    if (like_a_server && next_random() % 2 == 0 && pos < n) {
        /* next to a digit or a letter: inside a token, most of the time */
        if (frame[pos] >= '0' && frame[pos] <= '9') c = (uint8_t)('0' + next_random() % 10);
        else if (frame[pos] >= 'a' && frame[pos] <= 'z') c = (uint8_t)('a' + next_random() % 26);
    }
    switch (next_random() % 4) {
    case 0: if (pos < n) frame[pos] = c; break;
    case 1:
        if (n < cap - 1) {
            memmove(frame + pos + 1, frame + pos, n - pos);
            frame[pos] = c;
            n++;
        }
        break;
    case 2:
        if (pos < n) {
            memmove(frame + pos, frame + pos + 1, n - pos - 1);
            n--;
        }
        break;
    default: if (!like_a_server || next_random() % 8 == 0) n = pos;
    }
    return n;
}

static int env_rounds(long iterations)
{
    uint8_t frame[2048];
    fs_env *env = malloc(sizeof *env);
    fs_env_memo *memo = calloc(1, sizeof *memo);
    int failures = 0;
    const node_spec *current = NULL;
    for (long it = 0; it < iterations && failures < 5; it++) {
        size_t which = next_random() % N_ENV_BASES;
        if (env_bases[which].nodes != current) {   /* a new envelope: a new sink */
            if (next_random() % 4 != 0) continue;   /* (mostly stay with one) */
            current = env_bases[which].nodes;
            make_env(env, current);
            memset(memo, 0, sizeof *memo);
        }
        size_t n = strlen(env_bases[which].frame);
        memcpy(frame, env_bases[which].frame, n);
        failures += same_env_scan(frame, n, env, memo, it);
        for (int m = 1 + (int)(next_random() % 3); m > 0; m--) n = mutate(frame, n, sizeof frame, 1);
        failures += same_env_scan(frame, n, env, memo, it);
    }
    free(env);
    free(memo);
    return failures;
}

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 100000;
    state = argc > 2 ? strtoull(argv[2], NULL, 10) * 2 + 1 : 88172645463325252ull;
    uint8_t frame[2048];
    fs_memo *memo = calloc(1, sizeof *memo);
    int failures = 0;
    for (long it = 0; it < iterations && failures < 5; it++) {
        const char *base = bases[next_random() % N_BASES];
        size_t n = strlen(base);
        memcpy(frame, base, n);
        if (next_random() % 16 == 0) memset(memo, 0, sizeof *memo);
        /* every way of scanning: with each guess about data's end, both or none */
        int guesses = (int)(next_random() % 4);
        if (next_random() % 3 == 0) failures += same_scan(frame, n, memo, guesses, it);
        for (int m = 1 + (int)(next_random() % 4); m > 0; m--) n = mutate(frame, n, sizeof frame, 0);
        failures += same_scan(frame, n, memo, guesses, it);
    }
    free(memo);
    failures += env_rounds(iterations);
    printf("%ld iterations, %d mismatches\n", iterations, failures);
#ifdef FS_TEMPLATE_STATS
    printf("template hits: %lu data last, %lu data inside (%lu of them guessed)\n",
           fs_template_hits[0], fs_template_hits[1], suffix_guesses);
    printf("envelope template hits: %lu (%lu of them guessed)\n", fs_env_template_hits,
           env_guesses);
#endif
    return failures != 0;
}
