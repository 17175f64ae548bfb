/* Coverage plumbing for fuzzing the C core with atheris on gcc and ASan (see `make fuzz`).
 *
 * Two problems, one LD_PRELOADed shim (listed before libasan, hence
 * ASAN_OPTIONS=verify_asan_link_order=0):
 *
 * 1. With libasan preloaded, the coverage hooks of atheris' bundled libFuzzer
 *    (__sanitizer_cov_8bit_counters_init, __sanitizer_cov_trace_cmp8, ...) are interposed
 *    by libasan's own stubs, so Python coverage silently goes nowhere (atheris warns
 *    "Coverage symbols are being provided by a library other than libFuzzer"). The shim
 *    defines those hooks first and forwards each call to the definition inside atheris'
 *    core_with_libfuzzer module, found among the loaded objects on first use.
 *
 * 2. Atheris sees native coverage only when the extension is built by clang with
 *    -fsanitize=fuzzer-no-link. gcc offers -fsanitize-coverage=trace-pc (a call to
 *    __sanitizer_cov_trace_pc in every basic block) and trace-cmp, which libFuzzer no
 *    longer consumes. The shim turns trace-pc into an 8-bit counter per call site (the
 *    return address, direct-mapped: call sites are at least 5 bytes apart, so pc >> 2
 *    never collides within 4 MiB of code) with a PC table, registered with libFuzzer the
 *    first time atheris registers its own counters; trace-cmp goes to libFuzzer's table of
 *    recent compares, so mutations learn the C core's constants.
 *
 * Before registration (imports) the counters fill up harmlessly; libFuzzer clears them
 * before every run.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
#define COUNTERS (1u << 20)

static uint8_t counters[COUNTERS];
static uintptr_t pc_table[2 * COUNTERS];
static void *libfuzzer;
static int registered;

static int find_core(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    if (info->dlpi_name && strstr(info->dlpi_name, "core_with_libfuzzer")) {
        *(const char **)data = info->dlpi_name;
        return 1;
    }
    return 0;
}

/* the definition of name inside atheris' libFuzzer, or NULL while it is not loaded */
static void *real(const char *name)
{
    if (libfuzzer == NULL) {
        const char *path = NULL;
        dl_iterate_phdr(find_core, &path);
        if (path == NULL) return NULL;
        libfuzzer = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        if (libfuzzer == NULL) return NULL;
    }
    return dlsym(libfuzzer, name);
}

EXPORT void __sanitizer_cov_trace_pc(void)
{
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    uint8_t *counter = &counters[(pc >> 2) & (COUNTERS - 1)];
    if (*counter != 255) (*counter)++;
}

typedef void (*counters_init_fn)(uint8_t *, uint8_t *);
typedef void (*pcs_init_fn)(const uintptr_t *, const uintptr_t *);

EXPORT void __sanitizer_cov_pcs_init(const uintptr_t *begin, const uintptr_t *end)
{
    static pcs_init_fn fn;
    if (fn == NULL) fn = (pcs_init_fn)real("__sanitizer_cov_pcs_init");
    if (fn) fn(begin, end);
}

EXPORT void __sanitizer_cov_8bit_counters_init(uint8_t *begin, uint8_t *end)
{
    static counters_init_fn fn;
    if (fn == NULL) fn = (counters_init_fn)real("__sanitizer_cov_8bit_counters_init");
    if (fn == NULL) return;
    fn(begin, end);
    if (!registered) {
        registered = 1;
        /* fake but distinct PCs: libFuzzer only counts and prints them */
        for (size_t i = 0; i < COUNTERS; i++) {
            pc_table[2 * i] = (uintptr_t)0x10000000u + 4 * i;
            pc_table[2 * i + 1] = 0;
        }
        memset(counters, 0, sizeof(counters));
        fn(counters, counters + COUNTERS);
        __sanitizer_cov_pcs_init(pc_table, pc_table + 2 * COUNTERS);
        fprintf(stderr, "covshim: C core coverage: %u counters registered\n", COUNTERS);
    }
}

#define FORWARD2(name, type)                                                          \
    EXPORT void name(type a, type b)                                                  \
    {                                                                                 \
        static void (*fn)(type, type);                                                \
        if (fn == NULL) fn = (void (*)(type, type))real(#name);                       \
        if (fn) fn(a, b);                                                             \
    }
FORWARD2(__sanitizer_cov_trace_cmp1, uint8_t)
FORWARD2(__sanitizer_cov_trace_cmp2, uint16_t)
FORWARD2(__sanitizer_cov_trace_cmp4, uint32_t)
FORWARD2(__sanitizer_cov_trace_cmp8, uint64_t)
FORWARD2(__sanitizer_cov_trace_const_cmp1, uint8_t)
FORWARD2(__sanitizer_cov_trace_const_cmp2, uint16_t)
FORWARD2(__sanitizer_cov_trace_const_cmp4, uint32_t)
FORWARD2(__sanitizer_cov_trace_const_cmp8, uint64_t)

#define FORWARD1(name, type)                                                          \
    EXPORT void name(type a)                                                          \
    {                                                                                 \
        static void (*fn)(type);                                                      \
        if (fn == NULL) fn = (void (*)(type))real(#name);                             \
        if (fn) fn(a);                                                                \
    }
FORWARD1(__sanitizer_cov_trace_div4, uint32_t)
FORWARD1(__sanitizer_cov_trace_div8, uint64_t)
FORWARD1(__sanitizer_cov_trace_gep, uintptr_t)
FORWARD1(__sanitizer_cov_trace_pc_indir, uintptr_t)

EXPORT void __sanitizer_cov_trace_switch(uint64_t val, uint64_t *cases)
{
    static void (*fn)(uint64_t, uint64_t *);
    if (fn == NULL) fn = (void (*)(uint64_t, uint64_t *))real("__sanitizer_cov_trace_switch");
    if (fn) fn(val, cases);
}

/* gcc also traces floating-point compares; libFuzzer has no hook for them */
EXPORT void __sanitizer_cov_trace_cmpf(float a, float b) { (void)a; (void)b; }
EXPORT void __sanitizer_cov_trace_cmpd(double a, double b) { (void)a; (void)b; }
